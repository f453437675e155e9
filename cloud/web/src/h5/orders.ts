/**
 * What the phone remembers about its own orders (there is no login on the H5 pages):
 * the order id and the access key the create response gave, newest first.
 */
import type { PublicOrderStatus } from './api'

const KEY = 'dmr.h5.orders'
const MAX = 50

export interface RememberedOrder {
  id: string
  key: string
  created_at: number
  /** Where to pay (sandbox / H5 pay page) while the order is unpaid. */
  pay_url?: string
  /** WeChat Native: the `weixin://` URL to show as a QR code while the order is unpaid. */
  code_url?: string
  /** The lock was reported offline when the order was placed: offer the token at once. */
  lock_offline?: boolean
}

export function rememberedOrders(): RememberedOrder[] {
  try {
    const raw = globalThis.localStorage?.getItem(KEY)
    const list: unknown = raw ? JSON.parse(raw) : []
    return Array.isArray(list)
      ? list.filter(
          (o): o is RememberedOrder =>
            typeof o === 'object' && o !== null && typeof o.id === 'string' && typeof o.key === 'string',
        )
      : []
  } catch {
    return []
  }
}

export function rememberOrder(o: RememberedOrder): void {
  const list = [o, ...rememberedOrders().filter((x) => x.id !== o.id)].slice(0, MAX)
  try {
    globalThis.localStorage?.setItem(KEY, JSON.stringify(list))
  } catch {
    // Not remembered: the order page still works from its URL.
  }
}

export function keyOf(id: string): string | null {
  return rememberedOf(id)?.key ?? null
}

export function rememberedOf(id: string): RememberedOrder | null {
  return rememberedOrders().find((o) => o.id === id) ?? null
}

/** Adds keys learnt from the server's my-orders list, keeping what is already known. */
export function rememberAll(list: { id: string; access_key: string; created_at: number }[]): void {
  const known = new Map(rememberedOrders().map((o) => [o.id, o]))
  for (const o of list) {
    if (!known.has(o.id)) known.set(o.id, { id: o.id, key: o.access_key, created_at: o.created_at })
  }
  const merged = [...known.values()].sort((a, b) => b.created_at - a.created_at).slice(0, MAX)
  try {
    globalThis.localStorage?.setItem(KEY, JSON.stringify(merged))
  } catch {
    // Not remembered: the list still shows this time.
  }
}

/** Progress steps shown on the order page. */
export const STEPS = ['created', 'paid', 'unlocking', 'unlocked'] as const
export type Step = (typeof STEPS)[number]

/**
 * The index of the step reached, whether the order ended in failure, and whether nothing
 * more will happen (the live stream can stop). `unlock_failed` and `refunding` are not
 * final: a late unlock event may still complete the order, or the refund finishes.
 */
export function progressOf(status: PublicOrderStatus | string): { step: number; failed: boolean; final: boolean } {
  switch (status) {
    case 'created':
      return { step: 0, failed: false, final: false }
    case 'paid':
      return { step: 1, failed: false, final: false }
    case 'unlocking':
      return { step: 2, failed: false, final: false }
    case 'unlocked':
      return { step: 3, failed: false, final: false }
    case 'completed':
      return { step: 3, failed: false, final: true }
    case 'unlock_failed':
    case 'refunding':
      return { step: 2, failed: true, final: false }
    case 'refunded':
      return { step: 2, failed: true, final: true }
    case 'expired':
    case 'cancelled':
      return { step: 0, failed: true, final: true }
    default:
      return { step: 0, failed: false, final: false }
  }
}

/** Unlocking for longer than this without a result: the gateway is probably offline. */
export const STUCK_MS = 15_000

/**
 * Whether the page should offer the offline unlock token (a QR code the venue's scanner
 * reads, for a gateway without uplink): the unlock failed, or it has been "unlocking" for
 * too long, or the lock was offline when the order was placed and the order is paid.
 */
export function offlineAdvised(
  o: { status: string; paid_at: number | null; created_at: number },
  now: number,
  lockOffline = false,
  unlockingSince: number | null = null,
): boolean {
  if (o.status === 'unlock_failed') {
    return true
  }
  if (o.status === 'unlocking') {
    const since = unlockingSince ?? o.paid_at ?? o.created_at
    return lockOffline || now - since >= STUCK_MS
  }
  return false
}
