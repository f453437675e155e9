/**
 * Orders, refunds, settlements, reconciliation and the dashboard figures: the console's
 * money endpoints (cloud/src/orders, issue 6). Shapes follow the server's rows
 * (orders/mod.rs `OrderRow`, refunds.rs `RefundRow`, money.rs `SettlementRow` and
 * `ReportRow`, migration 0005); fields the server may not send yet are optional and the
 * pages show "—" for them. Times are Unix ms, money integer fen.
 */
import { api } from './client'
import { ApiError, seg, type ListParams, type Page } from '@/shared/http'
import type { OrderStatus } from '@/shared/orderStatus'

const V1 = '/api/v1'

export interface Order {
  id: string
  merchant_id: string
  venue_id: string
  lock_id: string
  gateway_id?: string
  plan_id?: string
  plan_name: string
  duration_minutes: number
  amount_fen: number
  refunded_fen?: number
  /** An OrderStatus; kept as string so a newer server state still renders. */
  status: OrderStatus | string
  provider?: string
  created_at: number
  paid_at: number | null
  unlocking_at?: number | null
  unlocked_at: number | null
  completed_at?: number | null
  ended_at?: number | null
  door_opened_at?: number | null
  review_reason?: string | null
  updated_at?: number
  /** Names, when the server joins them in (otherwise looked up by id). */
  lock_name?: string
  venue_name?: string
}

/** One recorded state change: who or what (user:<id>, system, provider:<name>, gateway:<id>, payer), when, why. */
export interface OrderTransition {
  id?: string
  from_status: string | null
  to_status: string
  actor: string
  reason: string
  at: number
}

export interface OrderPayment {
  id: string
  provider: string
  out_trade_no: string
  amount_fen: number
  status: 'pending' | 'succeeded' | 'closed' | string
  provider_txn_id: string | null
  created_at: number
  paid_at: number | null
  notified_at?: number | null
}

export interface Refund {
  id: string
  order_id: string
  amount_fen: number
  reason: string
  actor: string
  status: 'pending' | 'processing' | 'succeeded' | 'failed' | 'cancelled' | string
  out_refund_no?: string
  provider?: string
  attempts?: number
  last_error?: string | null
  created_at: number
  sent_at?: number | null
  completed_at?: number | null
}

/** Unlock evidence: gateway unlock events, command acks and door events. */
export interface UnlockEvent {
  id: string
  source: 'event' | 'ack' | 'door' | string
  result: string
  via?: string | null
  lock_id?: string
  gateway_id?: string
  token_id?: string | null
  at: number
  received_at?: number
}

/** "The one record": the order with everything that happened to it. */
export interface OrderDetail {
  order: Order
  transitions: OrderTransition[]
  payments: OrderPayment[]
  refunds: Refund[]
  unlock_events: UnlockEvent[]
}

export interface Settlement {
  id: string
  merchant_id: string
  /** The settled day, YYYY-MM-DD in Asia/Shanghai. */
  day: string
  commission_bp?: number
  orders_count?: number
  gross_fen: number
  refunds_fen?: number
  commission_fen: number
  net_fen: number
  status: string
  created_at?: number
}

export interface ReconciliationItem {
  id?: string
  kind: 'missing_notification' | 'unknown_payment' | 'amount_mismatch' | 'paid_never_opened' | 'opened_without_payment' | string
  order_id: string | null
  out_trade_no: string | null
  detail: string
}

export interface ReconciliationReport {
  id: string
  merchant_id: string | null
  provider: string
  day: string
  items_count: number
  /** A short text (or JSON text) the server wrote. */
  summary: string
  created_at: number
  items?: ReconciliationItem[]
}

/** GET /api/v1/dashboard/summary. Optional fields are drawn only when present. */
export interface DashboardSummary {
  today_revenue_fen: number
  today_orders: number
  today_refunds_fen?: number
  today_refunds?: number
  locks_online?: number
  locks_offline?: number
  open_alarms?: number
  /** Oldest first; up to 30 days. */
  days?: { day: string; revenue_fen: number; orders: number }[]
  /** Older servers: revenue only, oldest first. */
  revenue_by_day?: { day: string; revenue_fen: number; orders?: number }[]
  busiest_locks?: { lock_id: string; name?: string; lock_name?: string; orders: number; revenue_fen?: number }[]
}

export interface OrderListParams extends ListParams {
  status?: string
  venue_id?: string
  lock_id?: string
  merchant_id?: string
  /** Created at or after (Unix ms). */
  from?: number
  /** Created before (Unix ms). */
  to?: number
}

/** orders/handlers.rs `DayListQuery` (no search, no sort: newest day first). */
export interface SettlementListParams {
  page?: number
  per_page?: number
  merchant_id?: string
  /** First day, YYYY-MM-DD, inclusive. */
  from?: string
  /** Last day, YYYY-MM-DD, inclusive. */
  to?: string
}

export type ReportListParams = SettlementListParams

/** The detail endpoint may answer `{order, transitions, …}` or the order with the lists inside. */
export function toOrderDetail(raw: unknown): OrderDetail {
  const r = (raw ?? {}) as Record<string, unknown>
  const order = (typeof r['order'] === 'object' && r['order'] !== null ? r['order'] : r) as Order
  const arr = <T>(k: string): T[] => (Array.isArray(r[k]) ? (r[k] as T[]) : [])
  const transitions = arr<OrderTransition>('transitions').slice().sort((a, b) => a.at - b.at)
  const events = (r['unlock_events'] !== undefined ? arr<UnlockEvent>('unlock_events') : arr<UnlockEvent>('events'))
    .slice()
    .sort((a, b) => a.at - b.at)
  return { order, transitions, payments: arr('payments'), refunds: arr('refunds'), unlock_events: events }
}

export const ordersApi = {
  list: (p: OrderListParams) => api.get<Page<Order>>(`${V1}/orders`, p),
  get: async (id: string) => toOrderDetail(await api.get<unknown>(`${V1}/orders/${seg(id)}`)),
  /** Needs `order:refund`; the reason is required, the amount at most what is left (default: all of it). */
  refund: (id: string, body: { reason: string; amount_fen?: number }) =>
    api.post<unknown>(`${V1}/orders/${seg(id)}/refund`, body),
  /** The filtered list as CSV (same filters as `list`, no paging). */
  csv: (p: Omit<OrderListParams, 'page' | 'per_page'>) => api.download(`${V1}/orders.csv`, p),
}

export const settlementsApi = {
  list: (p: SettlementListParams) => api.get<Page<Settlement>>(`${V1}/settlements`, p),
  /** One statement as CSV. */
  csv: (id: string) => api.download(`${V1}/settlements/${seg(id)}/csv`),
}

export const RECONCILIATION_KINDS = [
  'missing_notification',
  'unknown_payment',
  'amount_mismatch',
  'paid_never_opened',
  'opened_without_payment',
] as const

export interface ReportItemParams {
  page?: number
  per_page?: number
  /** One of RECONCILIATION_KINDS; empty for all. */
  kind?: string
}

export const reconciliationApi = {
  /** Platform admins: the three-way reconciliation reports. */
  list: (p: ReportListParams) => api.get<Page<ReconciliationReport>>(`${V1}/reconciliation/reports`, p),
  /** What one report found, paged, optionally of one kind. */
  items: (reportId: string, p: ReportItemParams) =>
    api.get<Page<ReconciliationItem>>(`${V1}/reconciliation/reports/${seg(reportId)}/items`, p),
}

export const dashboardApi = {
  summary: () => api.get<DashboardSummary>(`${V1}/dashboard/summary`),
}

/** The per-day series of the summary, whichever name the server uses. */
export function summaryDays(s: DashboardSummary): { day: string; revenue_fen: number; orders: number | null }[] {
  const src = s.days ?? s.revenue_by_day ?? []
  return src.map((d) => ({ day: d.day, revenue_fen: d.revenue_fen, orders: d.orders ?? null }))
}

/** True when the endpoint does not exist on this server (an older dmr-cloud). */
export function isNotServedYet(err: unknown): boolean {
  return err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501)
}

/**
 * The last `n` Asia/Shanghai days ending `lastDay` (YYYY-MM-DD), each with the server's
 * figures or zero: servers may leave out days without orders, and the chart must still
 * show them as zero rather than skip them.
 */
export function fillDays(
  days: { day: string; revenue_fen: number; orders: number | null }[],
  lastDay: string,
  n = 30,
): { day: string; revenue_fen: number; orders: number | null }[] {
  const byDay = new Map(days.map((d) => [d.day, d]))
  const hasOrders = days.some((d) => d.orders !== null)
  const [y, m, d] = lastDay.split('-').map(Number)
  const end = Date.UTC(y ?? 1970, (m ?? 1) - 1, d ?? 1)
  const out = []
  for (let i = n - 1; i >= 0; i--) {
    const day = new Date(end - i * 86_400_000).toISOString().slice(0, 10)
    const v = byDay.get(day)
    out.push({ day, revenue_fen: v?.revenue_fen ?? 0, orders: v ? v.orders : hasOrders ? 0 : null })
  }
  return out
}
