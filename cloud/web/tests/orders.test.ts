import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { flushPromises, mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { setupI18n } from '@/shared/i18n'
import { canRefund, isFinal, ORDER_STATUSES, refundableFen, statusKey, statusTag } from '@/shared/orderStatus'
import { fillDays, summaryDays, toOrderDetail } from '@/console/api/orders'
import { orderTimeline } from '@/console/timeline'
import { linkSignal, outboxSignal } from '@/console/health'
import { shanghaiDayStart } from '@/shared/time'
import { messages } from '@/shared/i18n'
import RefundDialog from '@/console/components/RefundDialog.vue'
import { apiError, mockFetch } from './helpers'

describe('order status mapping', () => {
  it('names, colours and finality of every server state', () => {
    const zh = messages['zh-CN'] as unknown as { orderStatus: Record<string, string> }
    for (const s of ORDER_STATUSES) {
      expect(zh.orderStatus[s], s).toBeTruthy()
      expect(statusKey(s)).toBe(`orderStatus.${s}`)
    }
    expect(statusTag('unlock_failed')).toBe('danger')
    expect(statusTag('completed')).toBe('success')
    expect(statusTag('some_future_state')).toBe('info')
    expect(statusKey('some_future_state')).toBe('')
    expect(ORDER_STATUSES.filter(isFinal)).toEqual(['completed', 'expired', 'refunded', 'cancelled'])
  })

  it('offers refunds only for money taken and not yet returned', () => {
    expect(canRefund({ status: 'created', amount_fen: 100 })).toBe(false)
    expect(canRefund({ status: 'completed', amount_fen: 100, refunded_fen: 0 })).toBe(true)
    expect(canRefund({ status: 'completed', amount_fen: 100, refunded_fen: 100 })).toBe(false)
    expect(canRefund({ status: 'refunded', amount_fen: 100, refunded_fen: 100 })).toBe(false)
    expect(refundableFen({ amount_fen: 500, refunded_fen: 120 })).toBe(380)
    expect(refundableFen({ amount_fen: 500, refunded_fen: 900 })).toBe(0)
  })
})

describe('order detail and timeline', () => {
  const raw = {
    order: { id: 'o1', status: 'completed', amount_fen: 300, created_at: 1000 },
    transitions: [
      { from_status: 'paid', to_status: 'unlocking', actor: 'system', reason: 'token sent', at: 3000 },
      { from_status: null, to_status: 'created', actor: 'payer', reason: 'order placed', at: 1000 },
      { from_status: 'created', to_status: 'paid', actor: 'provider:sandbox', reason: 'notified', at: 2000 },
    ],
    payments: [{ id: 'p', provider: 'sandbox', out_trade_no: 'n', amount_fen: 300, status: 'succeeded', provider_txn_id: 't', created_at: 1000, paid_at: 2000 }],
    refunds: [],
    unlock_events: [
      { id: 'e2', source: 'door', result: 'closed', at: 5000 },
      { id: 'e1', source: 'event', result: 'ok', via: 'mqtt', gateway_id: 'g', at: 4000 },
    ],
  }

  it('accepts the wrapped or the flat shape and sorts by time', () => {
    const d = toOrderDetail(raw)
    expect(d.order.id).toBe('o1')
    expect(d.transitions.map((t) => t.to_status)).toEqual(['created', 'paid', 'unlocking'])
    const flat = toOrderDetail({ ...raw.order, transitions: raw.transitions, events: raw.unlock_events })
    expect(flat.order.id).toBe('o1')
    expect(flat.unlock_events.map((e) => e.id)).toEqual(['e1', 'e2'])
    expect(flat.payments).toEqual([])
  })

  it('merges everything into one record in time order, a transition before the payment at the same time', () => {
    const tl = orderTimeline(toOrderDetail(raw))
    expect(tl.map((e) => [e.at, e.kind, e.titleKey])).toEqual([
      [1000, 'transition', 'timeline.transition'],
      [2000, 'transition', 'timeline.transition'],
      [2000, 'payment', 'timeline.payment'],
      [3000, 'transition', 'timeline.transition'],
      [4000, 'unlock', 'timeline.unlock'],
      [5000, 'unlock', 'timeline.door'],
    ])
    expect(tl[1]?.who).toBe('provider:sandbox')
    expect(tl[4]?.detail).toBe('via mqtt')
  })
})

describe('dashboard series', () => {
  it('fills 30 days ending today with zeros where the server sent nothing', () => {
    const days = fillDays(
      [
        { day: '2026-11-24', revenue_fen: 500, orders: 2 },
        { day: '2026-10-01', revenue_fen: 999, orders: 9 },
      ],
      '2026-11-26',
    )
    expect(days).toHaveLength(30)
    expect(days[0]?.day).toBe('2026-10-28')
    expect(days[29]).toEqual({ day: '2026-11-26', revenue_fen: 0, orders: 0 })
    expect(days[27]).toEqual({ day: '2026-11-24', revenue_fen: 500, orders: 2 })
    expect(days.reduce((n, d) => n + d.revenue_fen, 0)).toBe(500)
  })

  it('crosses month and year ends and keeps "no order figures" as null', () => {
    const days = fillDays([{ day: '2026-01-01', revenue_fen: 1, orders: null }], '2026-01-02', 3)
    expect(days.map((d) => [d.day, d.orders])).toEqual([
      ['2025-12-31', null],
      ['2026-01-01', null],
      ['2026-01-02', null],
    ])
    expect(summaryDays({ today_revenue_fen: 0, today_orders: 0, revenue_by_day: [{ day: 'd', revenue_fen: 3 }] })).toEqual([
      { day: 'd', revenue_fen: 3, orders: null },
    ])
  })

  it('turns Asia/Shanghai days into UTC instants', () => {
    expect(shanghaiDayStart('2026-11-26')).toBe(Date.UTC(2026, 10, 25, 16))
    expect(shanghaiDayStart('26/11/2026')).toBeNull()
  })
})

describe('gateway health signals', () => {
  it('link and outbox', () => {
    expect(linkSignal({ status: 'enrolled', online: true })).toBe('up')
    expect(linkSignal({ status: 'enrolled', online: false })).toBe('down')
    expect(linkSignal({ status: 'pending', online: true })).toBe('unknown')
    expect(linkSignal({ status: 'enrolled' })).toBe('unknown')
    expect(outboxSignal({})).toBe('unknown')
    expect(outboxSignal({ outbox_pending: 0 })).toBe('empty')
    expect(outboxSignal({ outbox_pending: 3, outbox_oldest_age_s: 10 })).toBe('draining')
    expect(outboxSignal({ outbox_pending: 3, outbox_oldest_age_s: 301 })).toBe('stuck')
  })
})

describe('RefundDialog', () => {
  beforeEach(() => setActivePinia(createPinia()))
  afterEach(() => vi.unstubAllGlobals())

  const order = { id: 'o1', merchant_id: 'm', venue_id: 'v', lock_id: 'l', plan_name: 'p', duration_minutes: 60, amount_fen: 500, refunded_fen: 100, status: 'completed', created_at: 0, paid_at: 1, unlocked_at: 2 }

  async function open(respond: Parameters<typeof mockFetch>[0]) {
    const calls = mockFetch(respond)
    const w = mount(RefundDialog, {
      props: { modelValue: false, order },
      global: { plugins: [setupI18n()] },
      attachTo: document.body,
    })
    await w.setProps({ modelValue: true })
    await flushPromises()
    return { w, calls }
  }

  it('refuses a missing reason and an amount over what is left, without sending', async () => {
    const { w, calls } = await open(() => ({ status: 200, body: {} }))
    const amount = document.querySelector<HTMLInputElement>('input[name=amount]')!
    expect(amount.value).toBe('4.00')
    amount.value = '4.01'
    amount.dispatchEvent(new Event('input'))
    document.querySelector<HTMLButtonElement>('.el-dialog__footer .el-button--danger')!.click()
    await flushPromises()
    await new Promise((r) => setTimeout(r, 50))
    // The messages the form items show (their DOM text animates in, so read the props).
    const errors = w.findAllComponents({ name: 'ElFormItem' }).map((c) => c.props('error'))
    expect(errors).toEqual(['退款金额不能超过可退金额', '必填'])
    expect(document.querySelectorAll('.el-form-item.is-error')).toHaveLength(2)
    expect(calls).toHaveLength(0)
    w.unmount()
  })

  it('sends reason and fen, and shows the API refusal in place', async () => {
    const { w, calls } = await open(() => ({ status: 422, body: apiError('validation', 'amount_fen: exceeds the refundable 400', { field: 'amount_fen' }) }))
    const reason = document.querySelector<HTMLTextAreaElement>('textarea[name=reason]')!
    reason.value = '顾客投诉'
    reason.dispatchEvent(new Event('input'))
    const amount = document.querySelector<HTMLInputElement>('input[name=amount]')!
    amount.value = '1.5'
    amount.dispatchEvent(new Event('input'))
    document.querySelector<HTMLButtonElement>('.el-dialog__footer .el-button--danger')!.click()
    await flushPromises()
    expect(calls).toEqual([{ method: 'POST', url: '/api/v1/orders/o1/refund', auth: null, body: { reason: '顾客投诉', amount_fen: 150 } }])
    expect(w.findAllComponents({ name: 'ElFormItem' }).map((c) => c.props('error'))).toEqual(['exceeds the refundable 400', undefined])
    expect(w.emitted('done')).toBeUndefined()
    w.unmount()
  })
})
