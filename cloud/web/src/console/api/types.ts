/**
 * Shapes of the dmr-cloud API as served today (cloud/src/{module}/types.rs). Times are
 * milliseconds since the Unix epoch; money is integer fen; commission is basis points.
 */
import type { ListParams } from '@/shared/http'

export interface User {
  id: string
  merchant_id: string | null
  username: string
  phone: string | null
  display_name: string
  role: string
  created_at: number
  updated_at: number
}

export interface TokenResponse {
  access_token: string
  token_type: 'Bearer'
  /** seconds */
  expires_in: number
  refresh_token: string
  /** seconds */
  refresh_expires_in: number
  user: User
}

export type MerchantStatus = 'active' | 'suspended'

export interface Merchant {
  id: string
  name: string
  contact_phone: string | null
  /** basis points, 0..=10000 */
  commission_bp: number
  status: MerchantStatus
  created_at: number
  updated_at: number
}

export interface Venue {
  id: string
  merchant_id: string
  name: string
  address: string
  created_at: number
  updated_at: number
}

export type GatewayStatus = 'pending' | 'enrolled' | 'retired'

export interface Gateway {
  id: string
  merchant_id: string
  venue_id: string
  name: string
  status: GatewayStatus
  public_key: string | null
  enrolled_at: number | null
  last_seen_at: number | null
  /** Gateway link health (absent on older servers): MQTT session up, outbox backlog. */
  online?: boolean | null
  outbox_pending?: number | null
  outbox_oldest_age_s?: number | null
  agent_version?: string | null
  created_at: number
  updated_at: number
}

export type LockStatus = 'unknown' | 'online' | 'offline' | 'disabled'

export interface PricePlan {
  id: string
  name: string
  duration_minutes: number
  price_fen: number
}

export interface PricePlanInput {
  name: string
  duration_minutes: number
  price_fen: number
}

export interface Lock {
  id: string
  merchant_id: string
  venue_id: string
  gateway_id: string
  name: string
  device_code: string
  bus_address: number
  qr_code: string
  /** What the printed QR code encodes (the H5 page for this lock). */
  qr_payload: string
  status: LockStatus
  price_plans: PricePlan[]
  /** Live state from heartbeats and door events (gateway link); absent on older servers. */
  door_closed?: boolean | null
  locked?: boolean | null
  fw_version?: string | null
  last_heartbeat_at?: number | null
  created_at: number
  updated_at: number
}

export type EnrollmentStatus = 'active' | 'used' | 'expired'

export interface EnrollmentCode {
  id: string
  merchant_id: string
  venue_id: string
  status: EnrollmentStatus
  expires_at: number
  used_at: number | null
  used_by_gateway: string | null
  created_by: string
  created_at: number
}

/** Only the create response carries the code itself. */
export interface CreatedEnrollmentCode extends EnrollmentCode {
  code: string
}

export interface MerchantListParams extends ListParams {
  status?: MerchantStatus
}
export interface VenueListParams extends ListParams {
  merchant_id?: string
}
export interface GatewayListParams extends ListParams {
  merchant_id?: string
  venue_id?: string
  status?: GatewayStatus
}
export interface LockListParams extends ListParams {
  merchant_id?: string
  venue_id?: string
  gateway_id?: string
  status?: LockStatus
}
export interface UserListParams extends ListParams {
  role?: string
  merchant_id?: string
}
export interface EnrollmentListParams extends Omit<ListParams, 'q'> {
  merchant_id?: string
  venue_id?: string
}
