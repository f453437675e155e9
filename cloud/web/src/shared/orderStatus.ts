/**
 * Order states as the server names them (cloud/src/orders/mod.rs `Status`) and how both the
 * console and the phone pages show them: translation key, tag colour, whether the order is
 * over, and whether money can still be refunded from it.
 */
export const ORDER_STATUSES = [
  'created',
  'paid',
  'unlocking',
  'unlocked',
  'completed',
  'expired',
  'unlock_failed',
  'refunding',
  'refunded',
  'cancelled',
] as const
export type OrderStatus = (typeof ORDER_STATUSES)[number]

export type TagType = 'success' | 'warning' | 'danger' | 'info' | 'primary'

const TAG: Record<OrderStatus, TagType> = {
  created: 'info',
  paid: 'primary',
  unlocking: 'warning',
  unlocked: 'success',
  completed: 'success',
  expired: 'info',
  unlock_failed: 'danger',
  refunding: 'warning',
  refunded: 'info',
  cancelled: 'info',
}

export function isOrderStatus(s: string): s is OrderStatus {
  return (ORDER_STATUSES as readonly string[]).includes(s)
}

/** The tag colour of a status; unknown (newer server) states are neutral. */
export function statusTag(s: string): TagType {
  return isOrderStatus(s) ? TAG[s] : 'info'
}

/** i18n key of a status label; unknown states fall back to the raw name in the template. */
export function statusKey(s: string): string {
  return isOrderStatus(s) ? `orderStatus.${s}` : ''
}

/** No further transition will happen (the server's `is_final`). */
export function isFinal(s: string): boolean {
  return s === 'completed' || s === 'expired' || s === 'refunded' || s === 'cancelled'
}

/** Whether a refund may be asked for: money was taken and not all of it given back yet. */
export function canRefund(o: { status: string; amount_fen: number; refunded_fen?: number | null }): boolean {
  const paidStates = ['paid', 'unlocking', 'unlocked', 'completed', 'unlock_failed', 'refunding']
  return paidStates.includes(o.status) && o.amount_fen - (o.refunded_fen ?? 0) > 0
}

/** What may still be refunded, in fen. */
export function refundableFen(o: { amount_fen: number; refunded_fen?: number | null }): number {
  return Math.max(0, o.amount_fen - (o.refunded_fen ?? 0))
}
