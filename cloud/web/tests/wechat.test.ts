import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { isWeChat, payMode, providerOf, rememberPlan, takePlan } from '@/h5/wechat'
import { publicApi } from '@/h5/api'
import { deviceSession } from '@/h5/device'
import { mockFetch } from './helpers'

const WECHAT_UA =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN'
const SAFARI_UA =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1'

beforeEach(() => {
  localStorage.clear()
  sessionStorage.clear()
})
afterEach(() => vi.unstubAllGlobals())

describe('WeChat pay mode', () => {
  const both = ['sandbox', 'wechat']

  it('recognises the WeChat browser by its user agent', () => {
    expect(isWeChat(WECHAT_UA)).toBe(true)
    expect(isWeChat(SAFARI_UA)).toBe(false)
  })

  it('inside WeChat: sign in once, then JSAPI', () => {
    expect(payMode({ userAgent: WECHAT_UA, providers: both, oauth: true, bound: false })).toBe('oauth')
    expect(payMode({ userAgent: WECHAT_UA, providers: both, oauth: true, bound: true })).toBe('jsapi')
  })

  it('outside WeChat with WeChat Pay offered: Native, whatever the binding', () => {
    expect(payMode({ userAgent: SAFARI_UA, providers: both, oauth: true, bound: false })).toBe('native')
    expect(payMode({ userAgent: SAFARI_UA, providers: ['wechat'], oauth: true, bound: true })).toBe('native')
  })

  it('inside WeChat without sign-in configured: Native (long press reads the code)', () => {
    expect(payMode({ userAgent: WECHAT_UA, providers: both, oauth: false, bound: false })).toBe('native')
  })

  it('without WeChat Pay: the sandbox, even inside WeChat', () => {
    expect(payMode({ userAgent: WECHAT_UA, providers: ['sandbox'], oauth: true, bound: true })).toBe('sandbox')
    expect(payMode({ userAgent: SAFARI_UA, providers: ['sandbox'], oauth: false, bound: false })).toBe('sandbox')
  })

  it('creates WeChat orders for every WeChat mode', () => {
    expect(providerOf('jsapi')).toBe('wechat')
    expect(providerOf('native')).toBe('wechat')
    expect(providerOf('sandbox')).toBe('sandbox')
  })
})

describe('plan kept across the sign-in redirect', () => {
  it('comes back once, for the same lock only', () => {
    rememberPlan('LOCK1', 'plan-b')
    expect(takePlan('LOCK2')).toBeNull()
    rememberPlan('LOCK1', 'plan-b')
    expect(takePlan('LOCK1')).toBe('plan-b')
    expect(takePlan('LOCK1')).toBeNull()
  })

  it('survives corrupt storage', () => {
    sessionStorage.setItem('dmr.h5.wechatPlan', '{nope')
    expect(takePlan('LOCK1')).toBeNull()
  })
})

describe('WeChat sign-in calls', () => {
  it('send the device session and the lock code, without a login', async () => {
    const headers: Record<string, string>[] = []
    const calls = mockFetch((c) =>
      c.url.endsWith('/wechat/oauth')
        ? { status: 200, body: { authorize_url: 'https://open.weixin.qq.com/x', expires_at: 1 } }
        : { status: 200, body: { oauth: true, bound: false } },
    )
    const fetchMock = globalThis.fetch as unknown as { mock: { calls: [string, RequestInit][] } }
    const started = await publicApi.wechatOAuth('LOCK1')
    const id = await publicApi.wechatIdentity()
    for (const [, init] of fetchMock.mock.calls) headers.push(init.headers as Record<string, string>)
    expect(started.authorize_url).toBe('https://open.weixin.qq.com/x')
    expect(id).toEqual({ oauth: true, bound: false })
    expect(calls[0]).toMatchObject({ method: 'POST', url: '/api/v1/public/wechat/oauth', body: { qr_code: 'LOCK1' } })
    expect(calls[1]).toMatchObject({ method: 'GET', url: '/api/v1/public/wechat/identity' })
    for (const h of headers) {
      expect(h['X-Device-Session']).toBe(deviceSession())
      expect(h['Authorization']).toBeUndefined()
    }
  })
})
