/**
 * "The one record" of an order: its transitions, payments, refunds and unlock/door events
 * merged into one list in time order, so a person reads what happened from the scan to
 * the door closing without switching tabs.
 */
import type { OrderDetail } from './api/orders'

export type TimelineKind = 'transition' | 'payment' | 'refund' | 'unlock'

export interface TimelineEntry {
  at: number
  kind: TimelineKind
  /** i18n key of the headline. */
  titleKey: string
  /** Parameters of the headline. */
  params: Record<string, string | number>
  /** Who or what did it (actor, gateway, provider). */
  who: string
  detail: string
  type: 'primary' | 'success' | 'warning' | 'danger' | 'info'
}

export function orderTimeline(d: OrderDetail): TimelineEntry[] {
  const out: TimelineEntry[] = []
  for (const tr of d.transitions) {
    out.push({
      at: tr.at,
      kind: 'transition',
      titleKey: 'timeline.transition',
      params: { from: tr.from_status ?? '', to: tr.to_status },
      who: tr.actor,
      detail: tr.reason,
      type: tr.to_status === 'unlock_failed' ? 'danger' : tr.to_status === 'unlocked' || tr.to_status === 'completed' ? 'success' : 'primary',
    })
  }
  for (const p of d.payments) {
    out.push({
      at: p.paid_at ?? p.created_at,
      kind: 'payment',
      titleKey: 'timeline.payment',
      params: { amount: p.amount_fen, status: p.status },
      who: `provider:${p.provider}`,
      detail: [p.out_trade_no, p.provider_txn_id].filter(Boolean).join(' · '),
      type: p.status === 'succeeded' ? 'success' : 'info',
    })
  }
  for (const r of d.refunds) {
    out.push({
      at: r.completed_at ?? r.created_at,
      kind: 'refund',
      titleKey: 'timeline.refund',
      params: { amount: r.amount_fen, status: r.status },
      who: r.actor,
      detail: [r.reason, r.last_error].filter(Boolean).join(' · '),
      type: r.status === 'failed' ? 'danger' : 'warning',
    })
  }
  for (const e of d.unlock_events) {
    out.push({
      at: e.at,
      kind: 'unlock',
      titleKey: e.source === 'door' ? 'timeline.door' : e.source === 'ack' ? 'timeline.ack' : 'timeline.unlock',
      params: { result: e.result },
      who: e.gateway_id ? `gateway:${e.gateway_id}` : '',
      detail: [e.via ? `via ${e.via}` : '', e.token_id ? `token ${e.token_id.slice(0, 8)}` : ''].filter(Boolean).join(' · '),
      type: /fail|denied|error|timeout/i.test(e.result) ? 'danger' : 'success',
    })
  }
  // Stable: equal times keep the order above (transition before the event it caused).
  return out.map((e, i) => ({ e, i })).sort((a, b) => a.e.at - b.e.at || a.i - b.i).map((x) => x.e)
}
