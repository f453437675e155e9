/**
 * PENDING ENDPOINTS — NOT SERVED BY dmr-cloud YET.
 *
 * The public (no login) endpoints behind the phone pages arrive with the orders issue.
 * The paths and shapes here are this front end's proposal; align them with the real
 * handlers when they land. Until then every call answers 404 and the pages show their
 * error state — no data is invented.
 */
import { ApiError, HttpClient, seg } from '@/shared/http'

const client = new HttpClient()
const PUB = '/api/v1/public'

export type PublicLockStatus = 'unknown' | 'online' | 'offline' | 'disabled'

export interface PublicPlan {
  id: string
  name: string
  duration_minutes: number
  price_fen: number
}

/** PENDING: GET /api/v1/public/locks/{qr_code} */
export interface PublicLock {
  qr_code: string
  name: string
  venue: { name: string; address: string }
  status: PublicLockStatus
  /** Whether an order can be placed now (lock in service, not occupied). */
  available: boolean
  price_plans: PublicPlan[]
}

export type PublicOrderStatus =
  | 'created'
  | 'paid'
  | 'unlocking'
  | 'unlocked'
  | 'unlock_failed'
  | 'refunded'
  | 'expired'
  | 'cancelled'

export interface PublicOrder {
  id: string
  lock_name: string
  venue_name: string
  plan_name: string
  duration_minutes: number
  amount_fen: number
  status: PublicOrderStatus
  created_at: number
  paid_at: number | null
  unlocked_at: number | null
  /** Until when the paid time runs. */
  ends_at: number | null
}

export type PaymentProvider = 'wechat' | 'sandbox'

/** What the phone must do to pay. */
export interface PaymentStep {
  provider: PaymentProvider
  /** Sandbox and H5 payments: open this URL; it comes back to the order page. */
  redirect_url?: string
  /** WeChat JSAPI: the parameters for WeixinJSBridge `getBrandWCPayRequest`. */
  jsapi?: Record<string, string>
}

export interface CreatedOrder {
  order: PublicOrder
  /** Proves on later calls that this phone placed the order (there is no login). */
  access_key: string
  payment: PaymentStep
}

export interface OfflineToken {
  /** The signed unlock token, shown as a QR code for the venue scanner. */
  token: string
  expires_at: number
}

export const publicApi = {
  /** PENDING: GET /api/v1/public/locks/{qr_code} */
  lock: (qrCode: string) => client.get<PublicLock>(`${PUB}/locks/${seg(qrCode)}`, undefined, { auth: false }),
  /** PENDING: POST /api/v1/public/orders */
  createOrder: (body: { qr_code: string; plan_id: string; provider: PaymentProvider }) =>
    client.post<CreatedOrder>(`${PUB}/orders`, body, { auth: false }),
  /** PENDING: GET /api/v1/public/orders/{id}?key= */
  order: (id: string, key: string) =>
    client.get<PublicOrder>(`${PUB}/orders/${seg(id)}`, { key }, { auth: false }),
  /** PENDING: GET /api/v1/public/orders/{id}/offline-token?key= */
  offlineToken: (id: string, key: string) =>
    client.get<OfflineToken>(`${PUB}/orders/${seg(id)}/offline-token`, { key }, { auth: false }),
  /** PENDING: GET /api/v1/public/orders/{id}/events?key= (Server-Sent Events, `event: order`, data: PublicOrder) */
  eventsUrl: (id: string, key: string) => `${PUB}/orders/${seg(id)}/events?key=${encodeURIComponent(key)}`,
}

/** How a failed call should read to a person on the street. */
export function publicErrorKey(err: unknown): 'h5.lockNotFound' | 'h5.serviceUnavailable' {
  return err instanceof ApiError && err.status === 404 ? 'h5.lockNotFound' : 'h5.serviceUnavailable'
}
