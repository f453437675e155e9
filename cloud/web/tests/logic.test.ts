import { describe, expect, it } from 'vitest'
import { gatewayHealth } from '@/console/health'
import { keyOf, progressOf, rememberedOrders, rememberOrder } from '@/h5/orders'
import { publicErrorKey } from '@/h5/api'
import { ApiError } from '@/shared/http'

describe('gateway health', () => {
  const now = 1_000_000_000
  it('derives health from status and last_seen_at', () => {
    expect(gatewayHealth({ status: 'pending', last_seen_at: now }, now)).toBe('unknown')
    expect(gatewayHealth({ status: 'enrolled', last_seen_at: null }, now)).toBe('unknown')
    expect(gatewayHealth({ status: 'enrolled', last_seen_at: now - 60_000 }, now)).toBe('online')
    expect(gatewayHealth({ status: 'enrolled', last_seen_at: now - 10 * 60_000 }, now)).toBe('stale')
    expect(gatewayHealth({ status: 'enrolled', last_seen_at: now - 60 * 60_000 }, now)).toBe('offline')
  })
})

describe('phone order progress', () => {
  it('maps order states to steps', () => {
    expect(progressOf('created')).toEqual({ step: 0, failed: false, final: false })
    expect(progressOf('paid').step).toBe(1)
    // unlocked is followed by completed (door closed again); unlock_failed by a refund or a
    // late unlock event: neither is final.
    expect(progressOf('unlocked')).toEqual({ step: 3, failed: false, final: false })
    expect(progressOf('completed')).toEqual({ step: 3, failed: false, final: true })
    expect(progressOf('unlock_failed')).toEqual({ step: 2, failed: true, final: false })
    expect(progressOf('refunded')).toEqual({ step: 2, failed: true, final: true })
  })

  it('remembers the orders this phone placed, newest first', () => {
    localStorage.clear()
    rememberOrder({ id: 'o1', key: 'k1', created_at: 1 })
    rememberOrder({ id: 'o2', key: 'k2', created_at: 2 })
    rememberOrder({ id: 'o1', key: 'k1', created_at: 1 })
    expect(rememberedOrders().map((o) => o.id)).toEqual(['o1', 'o2'])
    expect(keyOf('o2')).toBe('k2')
    expect(keyOf('nope')).toBeNull()
    localStorage.setItem('dmr.h5.orders', 'not json')
    expect(rememberedOrders()).toEqual([])
  })

  it('tells a missing lock from an unavailable service', () => {
    expect(publicErrorKey(new ApiError(404, 'not_found', 'no such resource'))).toBe('h5.lockNotFound')
    expect(publicErrorKey(new ApiError(0, 'network', 'x'))).toBe('h5.serviceUnavailable')
  })
})

describe('phone payment step', () => {
  it('follows a redirect, or calls WeChat JSAPI and reads its answer', async () => {
    const { pay } = await import('@/h5/pay')
    const loc = { href: '' }
    const answers: string[] = []
    const win = {
      location: loc,
      WeixinJSBridge: {
        invoke: (_api: string, params: Record<string, string>, cb: (r: { err_msg: string }) => void) => {
          answers.push(params['package'] ?? '')
          cb({ err_msg: 'get_brand_wcpay_request:cancel' })
        },
      },
    } as unknown as Window
    expect(await pay({ provider: 'sandbox', redirect_url: '/sandbox/pay/1' }, win)).toBe('redirected')
    expect(loc.href).toBe('/sandbox/pay/1')
    expect(await pay({ provider: 'wechat', jsapi: { package: 'prepay_id=x' } }, win)).toBe('cancelled')
    expect(answers).toEqual(['prepay_id=x'])
    expect(await pay({ provider: 'wechat', jsapi: {} }, { location: loc } as unknown as Window)).toBe('failed')
  })
})
