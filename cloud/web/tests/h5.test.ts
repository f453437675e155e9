import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { Attempts, deviceSession, randomId } from '@/h5/device'
import { offlineAdvised, rememberAll, rememberedOf, rememberedOrders, rememberOrder, STUCK_MS } from '@/h5/orders'
import { publicApi } from '@/h5/api'
import { mockFetch } from './helpers'

beforeEach(() => localStorage.clear())
afterEach(() => vi.unstubAllGlobals())

describe('device session', () => {
  it('is made once and kept', () => {
    const a = deviceSession()
    expect(a).toMatch(/^[0-9a-f]{32}$/)
    expect(deviceSession()).toBe(a)
    localStorage.setItem('dmr.h5.device', 'tampered value!')
    const b = deviceSession()
    expect(b).not.toBe(a)
    expect(b).toMatch(/^[0-9a-f]{32}$/)
  })

  it('random ids do not repeat', () => {
    const ids = new Set(Array.from({ length: 200 }, () => randomId()))
    expect(ids.size).toBe(200)
  })

  it('one idempotency key per attempt until it is settled', () => {
    const a = new Attempts()
    const k = a.keyFor('lock/plan')
    expect(a.keyFor('lock/plan')).toBe(k)
    expect(a.keyFor('lock/other')).not.toBe(k)
    a.settle('lock/plan')
    expect(a.keyFor('lock/plan')).not.toBe(k)
  })

  it('sends the session and the key with the create call, and the session for my orders', async () => {
    const calls: Record<string, string>[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (_u: string, init: RequestInit) => {
        calls.push(init.headers as Record<string, string>)
        return new Response(JSON.stringify({ items: [] }), { status: 200 })
      }),
    )
    await publicApi.createOrder({ qr_code: 'Q', plan_id: 'p', provider: 'sandbox' }, 'key-123456')
    await publicApi.myOrders()
    expect(calls[0]?.['Idempotency-Key']).toBe('key-123456')
    expect(calls[0]?.['X-Device-Session']).toBe(deviceSession())
    expect(calls[1]?.['X-Device-Session']).toBe(deviceSession())
    expect(calls[1]?.['Authorization']).toBeUndefined()
  })
})

describe('offline token advice', () => {
  const base = { paid_at: 1_000, created_at: 0 }
  it('after a failed unlock, a long unlocking, or at once when the lock was offline', () => {
    expect(offlineAdvised({ ...base, status: 'unlock_failed' }, 2_000)).toBe(true)
    expect(offlineAdvised({ ...base, status: 'unlocking' }, 1_000 + STUCK_MS - 1)).toBe(false)
    expect(offlineAdvised({ ...base, status: 'unlocking' }, 1_000 + STUCK_MS)).toBe(true)
    expect(offlineAdvised({ ...base, status: 'unlocking' }, 1_500, true)).toBe(true)
    // Timed from when this page saw "unlocking", if later than the payment.
    expect(offlineAdvised({ ...base, status: 'unlocking' }, 1_000 + STUCK_MS, false, 5_000)).toBe(false)
    expect(offlineAdvised({ ...base, status: 'paid' }, 99_999, true)).toBe(false)
    expect(offlineAdvised({ ...base, status: 'unlocked' }, 99_999, true)).toBe(false)
  })
})

describe('remembered orders', () => {
  it('keeps the pay URL and merges keys from my-orders without losing local data', () => {
    rememberOrder({ id: 'o1', key: 'k1', created_at: 5, pay_url: '/pay/sandbox/x', lock_offline: true })
    rememberAll([
      { id: 'o1', access_key: 'k1-server', created_at: 5 },
      { id: 'o2', access_key: 'k2', created_at: 9 },
    ])
    expect(rememberedOrders().map((o) => o.id)).toEqual(['o2', 'o1'])
    expect(rememberedOf('o1')).toEqual({ id: 'o1', key: 'k1', created_at: 5, pay_url: '/pay/sandbox/x', lock_offline: true })
    expect(rememberedOf('o2')?.key).toBe('k2')
  })

  it('survives corrupt storage', () => {
    localStorage.setItem('dmr.h5.orders', '{not json')
    expect(rememberedOrders()).toEqual([])
    mockFetch(() => ({ status: 200, body: {} }))
  })
})
