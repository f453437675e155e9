/**
 * The public (no login) endpoints behind the phone pages (cloud/src/orders/public.rs):
 * lock by QR code, create order (with `Idempotency-Key` and `X-Device-Session`), order by
 * id and access key, its live events (SSE), the offline unlock token, and my orders by
 * device session. Shapes follow the server's `PublicLock`, `PublicOrder`, `CreatedOrder`,
 * `PaymentStep`, `OfflineToken`, `MyOrders`.
 */
import { ApiError, HttpClient, seg } from '@/shared/http'
import type { OrderStatus } from '@/shared/orderStatus'
import { deviceSession } from './device'

const client = new HttpClient()
const PUB = '/api/v1/public'

export type PublicLockStatus = 'unknown' | 'online' | 'offline' | 'disabled'

export interface PublicPlan {
  id: string
  name: string
  duration_minutes: number
  price_fen: number
}

/** GET /api/v1/public/locks/{qr_code} */
export interface PublicLock {
  qr_code: string
  name: string
  venue: { name: string; address: string }
  status: PublicLockStatus
  /** Whether an order can be placed now (lock in service, not occupied). */
  available: boolean
  price_plans: PublicPlan[]
  /** Payment providers this cloud offers ("sandbox", "wechat"). */
  providers?: string[]
  /** Whether the cloud can run WeChat sign-in (OAuth) so JSAPI can be used inside WeChat. */
  wechat_oauth?: boolean
}

export type PublicOrderStatus = OrderStatus

export interface PublicOrder {
  id: string
  lock_name: string
  venue_name: string
  plan_name: string
  duration_minutes: number
  amount_fen: number
  refunded_fen?: number
  status: PublicOrderStatus
  created_at: number
  /** Unpaid orders expire at this time. */
  pay_deadline_at?: number
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
  /** WeChat Native (payer outside WeChat): the `weixin://` URL to show as a QR code. */
  code_url?: string
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

/** A remembered order as my-orders returns it: the order and its access key. */
export interface MyOrder extends PublicOrder {
  access_key: string
}

export const publicApi = {
  lock: (qrCode: string) => client.get<PublicLock>(`${PUB}/locks/${seg(qrCode)}`, undefined, { auth: false }),
  /**
   * Places an order. The same `idempotencyKey` (a retry of one attempt) answers the same
   * order; `X-Device-Session` binds it to this phone's "my orders".
   */
  createOrder: (
    body: { qr_code: string; plan_id: string; provider: PaymentProvider; openid?: string },
    idempotencyKey: string,
  ) =>
    client.post<CreatedOrder>(`${PUB}/orders`, body, {
      auth: false,
      headers: { 'Idempotency-Key': idempotencyKey, 'X-Device-Session': deviceSession() },
    }),
  order: (id: string, key: string) =>
    client.get<PublicOrder>(`${PUB}/orders/${seg(id)}`, { key }, { auth: false }),
  offlineToken: (id: string, key: string) =>
    client.get<OfflineToken>(`${PUB}/orders/${seg(id)}/offline-token`, { key }, { auth: false }),
  /** Server-Sent Events: `event: order`, data: PublicOrder, each time it changes; ends after a final state. */
  eventsUrl: (id: string, key: string) => `${PUB}/orders/${seg(id)}/events?key=${encodeURIComponent(key)}`,
  /**
   * Starts WeChat sign-in (snsapi_base) for this device session: the page then goes to
   * `authorize_url`, and WeChat comes back through the cloud to /h5/l/{qr_code}?wechat=1.
   */
  wechatOAuth: (qrCode: string) =>
    client.post<{ authorize_url: string; expires_at: number }>(
      `${PUB}/wechat/oauth`,
      { qr_code: qrCode },
      { auth: false, headers: { 'X-Device-Session': deviceSession() } },
    ),
  /** Whether this device session already has a WeChat openid (JSAPI possible). */
  wechatIdentity: () =>
    client.get<{ oauth: boolean; bound: boolean }>(`${PUB}/wechat/identity`, undefined, {
      auth: false,
      headers: { 'X-Device-Session': deviceSession() },
    }),
  /** The latest 50 orders placed from this device. */
  myOrders: () =>
    client.get<{ items: MyOrder[] }>(`${PUB}/my/orders`, undefined, {
      auth: false,
      headers: { 'X-Device-Session': deviceSession() },
    }),
}

/** How a failed call should read to a person on the street. */
export function publicErrorKey(err: unknown): 'h5.lockNotFound' | 'h5.serviceUnavailable' {
  return err instanceof ApiError && err.status === 404 ? 'h5.lockNotFound' : 'h5.serviceUnavailable'
}
