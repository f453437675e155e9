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
  return rememberedOrders().find((o) => o.id === id)?.key ?? null
}

/** Progress steps shown on the order page. */
export const STEPS = ['created', 'paid', 'unlocking', 'unlocked'] as const
export type Step = (typeof STEPS)[number]

/** The index of the step reached, and whether the order ended in failure. */
export function progressOf(status: PublicOrderStatus): { step: number; failed: boolean; final: boolean } {
  switch (status) {
    case 'created':
      return { step: 0, failed: false, final: false }
    case 'paid':
      return { step: 1, failed: false, final: false }
    case 'unlocking':
      return { step: 2, failed: false, final: false }
    case 'unlocked':
      return { step: 3, failed: false, final: true }
    case 'unlock_failed':
    case 'refunded':
      return { step: 2, failed: true, final: true }
    case 'expired':
    case 'cancelled':
      return { step: 0, failed: true, final: true }
  }
}
