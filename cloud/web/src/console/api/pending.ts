/**
 * PENDING ENDPOINTS — NOT SERVED BY dmr-cloud YET.
 *
 * Orders, refunds, settlements, dashboard figures and live updates arrive with the orders
 * issue. The paths and shapes below are this front end's proposal; the pages that use them
 * show a "not available yet" state when the server answers 404 (see `isNotServedYet`).
 * Align them with the real handlers when they land.
 */
import { api } from './client'
import { ApiError, seg, type ListParams, type Page } from '@/shared/http'

const V1 = '/api/v1'

export type OrderStatus = 'created' | 'paid' | 'unlocked' | 'unlock_failed' | 'refunded' | 'expired' | 'cancelled'

export interface Order {
  id: string
  merchant_id: string
  venue_id: string
  lock_id: string
  plan_name: string
  duration_minutes: number
  amount_fen: number
  status: OrderStatus
  created_at: number
  paid_at: number | null
  unlocked_at: number | null
}

export interface Settlement {
  id: string
  merchant_id: string
  /** the settled day, YYYY-MM-DD in Asia/Shanghai */
  day: string
  gross_fen: number
  commission_fen: number
  net_fen: number
  status: string
}

export interface DashboardSummary {
  today_revenue_fen: number
  today_orders: number
  /** last 7 days, oldest first */
  revenue_by_day: { day: string; revenue_fen: number }[]
}

export interface OrderListParams extends ListParams {
  status?: OrderStatus
  venue_id?: string
  lock_id?: string
}

export const ordersApi = {
  /** PENDING: GET /api/v1/orders */
  list: (p: OrderListParams) => api.get<Page<Order>>(`${V1}/orders`, p),
  /** PENDING: POST /api/v1/orders/{id}/refund */
  refund: (id: string, reason: string) => api.post<Order>(`${V1}/orders/${seg(id)}/refund`, { reason }),
}

export const settlementsApi = {
  /** PENDING: GET /api/v1/settlements */
  list: (p: ListParams) => api.get<Page<Settlement>>(`${V1}/settlements`, p),
}

export const dashboardApi = {
  /** PENDING: GET /api/v1/dashboard/summary */
  summary: () => api.get<DashboardSummary>(`${V1}/dashboard/summary`),
}

/**
 * PENDING: GET /api/v1/events (Server-Sent Events: order, device and alarm changes).
 * EventSource cannot send an Authorization header, so the final design needs a short-lived
 * query token or a cookie; decided with the orders issue.
 */
export const LIVE_EVENTS_PATH = `${V1}/events`

/** True when the endpoint simply does not exist on this server yet. */
export function isNotServedYet(err: unknown): boolean {
  return err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501)
}
