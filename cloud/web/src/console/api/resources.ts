/**
 * Every console endpoint that dmr-cloud serves today (cloud/src/app.rs `routes`).
 */
import { api } from './client'
import { seg, type ListParams, type Page } from '@/shared/http'
import type {
  CreatedEnrollmentCode,
  EnrollmentCode,
  EnrollmentListParams,
  Gateway,
  GatewayListParams,
  Lock,
  LockListParams,
  LockStatus,
  Merchant,
  MerchantListParams,
  MerchantStatus,
  PricePlanInput,
  TokenResponse,
  User,
  UserListParams,
  Venue,
  VenueListParams,
} from './types'

const V1 = '/api/v1'

export const authApi = {
  login: (login: string, password: string) =>
    api.post<TokenResponse>(`${V1}/auth/login`, { login, password }, { auth: false }),
  refresh: (refresh_token: string) =>
    api.post<TokenResponse>(`${V1}/auth/refresh`, { refresh_token }, { auth: false }),
  logout: (refresh_token: string) => api.post<void>(`${V1}/auth/logout`, { refresh_token }, { auth: false }),
  changePassword: (current_password: string, new_password: string) =>
    api.post<void>(`${V1}/auth/password`, { current_password, new_password }),
  me: () => api.get<User>(`${V1}/me`),
  updateMe: (patch: { display_name?: string; phone?: string }) => api.patch<User>(`${V1}/me`, patch),
}

export const merchantsApi = {
  list: (p: MerchantListParams) => api.get<Page<Merchant>>(`${V1}/merchants`, p),
  get: (id: string) => api.get<Merchant>(`${V1}/merchants/${seg(id)}`),
  create: (body: { name: string; contact_phone?: string; commission_bp: number }) =>
    api.post<Merchant>(`${V1}/merchants`, body),
  update: (
    id: string,
    patch: { name?: string; contact_phone?: string; commission_bp?: number; status?: MerchantStatus },
  ) => api.patch<Merchant>(`${V1}/merchants/${seg(id)}`, patch),
  remove: (id: string) => api.delete(`${V1}/merchants/${seg(id)}`),
}

export const venuesApi = {
  list: (p: VenueListParams) => api.get<Page<Venue>>(`${V1}/venues`, p),
  get: (id: string) => api.get<Venue>(`${V1}/venues/${seg(id)}`),
  create: (body: { name: string; address?: string; merchant_id?: string }) => api.post<Venue>(`${V1}/venues`, body),
  update: (id: string, patch: { name?: string; address?: string }) => api.patch<Venue>(`${V1}/venues/${seg(id)}`, patch),
  remove: (id: string) => api.delete(`${V1}/venues/${seg(id)}`),
}

export const gatewaysApi = {
  list: (p: GatewayListParams) => api.get<Page<Gateway>>(`${V1}/gateways`, p),
  get: (id: string) => api.get<Gateway>(`${V1}/gateways/${seg(id)}`),
  create: (body: { venue_id: string; name: string }) => api.post<Gateway>(`${V1}/gateways`, body),
  update: (id: string, patch: { name?: string; venue_id?: string }) =>
    api.patch<Gateway>(`${V1}/gateways/${seg(id)}`, patch),
  remove: (id: string) => api.delete(`${V1}/gateways/${seg(id)}`),
}

export interface LockCreate {
  gateway_id: string
  device_code: string
  bus_address: number
  name?: string
  price_plans?: PricePlanInput[]
}
export interface LockPatch {
  name?: string
  gateway_id?: string
  bus_address?: number
  /** Clients may only take a lock out of service (`disabled`) or put it back (`unknown`). */
  status?: Extract<LockStatus, 'disabled' | 'unknown'>
  /** Replaces every plan of the lock. */
  price_plans?: PricePlanInput[]
}

export const locksApi = {
  list: (p: LockListParams) => api.get<Page<Lock>>(`${V1}/locks`, p),
  get: (id: string) => api.get<Lock>(`${V1}/locks/${seg(id)}`),
  create: (body: LockCreate) => api.post<Lock>(`${V1}/locks`, body),
  update: (id: string, patch: LockPatch) => api.patch<Lock>(`${V1}/locks/${seg(id)}`, patch),
  remove: (id: string) => api.delete(`${V1}/locks/${seg(id)}`),
}

export const usersApi = {
  list: (p: UserListParams) => api.get<Page<User>>(`${V1}/users`, p),
  get: (id: string) => api.get<User>(`${V1}/users/${seg(id)}`),
  create: (body: {
    username: string
    password: string
    display_name: string
    role: string
    phone?: string
    merchant_id?: string
  }) => api.post<User>(`${V1}/users`, body),
  update: (id: string, patch: { display_name?: string; phone?: string; password?: string }) =>
    api.patch<User>(`${V1}/users/${seg(id)}`, patch),
  remove: (id: string) => api.delete(`${V1}/users/${seg(id)}`),
}

export const enrollmentApi = {
  list: (p: EnrollmentListParams) => api.get<Page<EnrollmentCode>>(`${V1}/enrollment-codes`, p),
  create: (body: { venue_id: string; gateway_id?: string; ttl_minutes?: number }) =>
    api.post<CreatedEnrollmentCode>(`${V1}/enrollment-codes`, body),
  revoke: (id: string) => api.delete(`${V1}/enrollment-codes/${seg(id)}`),
}

/** Total of a filtered list without fetching its rows (per_page=1). A lower bound when the
 * server stopped counting (past 10,000 rows): see `countWithBound`. */
export async function countOf<P extends ListParams>(
  list: (p: P) => Promise<Page<unknown>>,
  params: Omit<P, 'page' | 'per_page'>,
): Promise<number> {
  return (await countWithBound(list, params)).n
}

/** Total of a filtered list and whether it is exact (false: at least `n` match). */
export async function countWithBound<P extends ListParams>(
  list: (p: P) => Promise<Page<unknown>>,
  params: Omit<P, 'page' | 'per_page'>,
): Promise<{ n: number; exact: boolean }> {
  const page = await list({ ...params, page: 1, per_page: 1 } as P)
  return { n: page.total, exact: page.total_exact !== false }
}
