import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { flushPromises, mount } from '@vue/test-utils'
import { createMemoryHistory, createRouter } from 'vue-router'
import { h } from 'vue'
import { setupI18n } from '@/shared/i18n'
import LockView from '@/h5/views/LockView.vue'
import { rememberedOrders } from '@/h5/orders'
import { mockFetch } from './helpers'

const WECHAT_UA = 'Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Mobile Safari/537.36 MicroMessenger/8.0.47.2560'
const LOCK = {
  qr_code: 'LOCK1',
  name: 'L1',
  venue: { name: 'V', address: 'A' },
  status: 'online',
  available: true,
  price_plans: [
    { id: 'p1', name: '1 h', duration_minutes: 60, price_fen: 300 },
    { id: 'p2', name: '2 h', duration_minutes: 120, price_fen: 500 },
  ],
  providers: ['sandbox', 'wechat'],
  wechat_oauth: true,
}

let ua: string
beforeEach(() => {
  localStorage.clear()
  sessionStorage.clear()
  ua = navigator.userAgent
})
afterEach(() => {
  Object.defineProperty(navigator, 'userAgent', { value: ua, configurable: true })
  vi.unstubAllGlobals()
})

async function mountLock(userAgent: string) {
  Object.defineProperty(navigator, 'userAgent', { value: userAgent, configurable: true })
  const router = createRouter({
    history: createMemoryHistory(),
    routes: [
      { path: '/l/:code', component: LockView, props: true },
      { path: '/o/:id', name: 'order', component: { render: () => h('div', 'order') } },
    ],
  })
  await router.push('/l/LOCK1')
  const w = mount(LockView, { props: { code: 'LOCK1' }, global: { plugins: [setupI18n(), router] } })
  await flushPromises()
  return w
}

describe('lock page with WeChat Pay', () => {
  it('inside WeChat without an openid: starts the sign-in instead of ordering', async () => {
    const calls = mockFetch((c) => {
      if (c.url.endsWith('/wechat/identity')) return { status: 200, body: { oauth: true, bound: false } }
      if (c.url.endsWith('/wechat/oauth')) return { status: 200, body: { authorize_url: '#wechat-sign-in', expires_at: 1 } }
      return { status: 200, body: LOCK }
    })
    const w = await mountLock(WECHAT_UA)
    await w.find('button.van-button--primary').trigger('click')
    await flushPromises()
    const urls = calls.map((c) => `${c.method} ${c.url}`)
    expect(urls).toContain('GET /api/v1/public/wechat/identity')
    expect(urls).toContain('POST /api/v1/public/wechat/oauth')
    expect(urls.some((u) => u.startsWith('POST /api/v1/public/orders'))).toBe(false)
    expect(sessionStorage.getItem('dmr.h5.wechatPlan')).toContain('p1')
    w.unmount()
  })

  it('inside WeChat with an openid bound: a WeChat order (JSAPI), no openid sent', async () => {
    const calls = mockFetch((c) => {
      if (c.url.endsWith('/wechat/identity')) return { status: 200, body: { oauth: true, bound: true } }
      if (c.url.endsWith('/orders'))
        return {
          status: 201,
          body: { order: { id: 'o1', created_at: 1 }, access_key: 'k', payment: { provider: 'wechat', jsapi: { appId: 'wx' } } },
        }
      return { status: 200, body: LOCK }
    })
    const w = await mountLock(WECHAT_UA)
    await w.find('button.van-button--primary').trigger('click')
    await flushPromises()
    const order = calls.find((c) => c.method === 'POST' && c.url.endsWith('/orders'))
    expect(order?.body).toEqual({ qr_code: 'LOCK1', plan_id: 'p1', provider: 'wechat' })
    expect(calls.some((c) => c.url.endsWith('/wechat/oauth'))).toBe(false)
    w.unmount()
  })

  it('outside WeChat: a WeChat order whose code_url the order page shows', async () => {
    const calls = mockFetch((c) => {
      if (c.url.endsWith('/orders'))
        return {
          status: 201,
          body: {
            order: { id: 'o2', created_at: 2 },
            access_key: 'k2',
            payment: { provider: 'wechat', code_url: 'weixin://wxpay/bizpayurl?pr=abc' },
          },
        }
      return { status: 200, body: LOCK }
    })
    const w = await mountLock('Mozilla/5.0 (iPhone) Safari/604.1')
    await w.find('button.van-button--primary').trigger('click')
    await flushPromises()
    expect(calls.some((c) => c.url.endsWith('/wechat/identity'))).toBe(false)
    const order = calls.find((c) => c.method === 'POST' && c.url.endsWith('/orders'))
    expect(order?.body).toMatchObject({ provider: 'wechat' })
    expect(rememberedOrders()[0]).toMatchObject({ id: 'o2', code_url: 'weixin://wxpay/bizpayurl?pr=abc' })
    w.unmount()
  })
})
