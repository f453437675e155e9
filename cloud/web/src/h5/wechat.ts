/**
 * How the phone pays when this cloud offers WeChat Pay: inside WeChat's browser the page
 * needs the payer's openid for JSAPI, which only WeChat's OAuth step (snsapi_base) gives
 * (the cloud binds it to this device session, cloud/src/orders/wechat_oauth.rs); outside
 * WeChat the payer scans a Native `code_url` QR code with WeChat. The choice is a pure
 * function so it can be tested without a browser.
 */

export type PayMode =
  /** No WeChat Pay here: the sandbox (or another redirecting provider). */
  | 'sandbox'
  /** Inside WeChat, no openid yet: go through WeChat's sign-in first. */
  | 'oauth'
  /** Inside WeChat with an openid bound: WeixinJSBridge getBrandWCPayRequest. */
  | 'jsapi'
  /** Outside WeChat (or no sign-in configured): show the code_url as a QR code. */
  | 'native'

export function isWeChat(userAgent: string): boolean {
  return /MicroMessenger/i.test(userAgent)
}

export interface PayContext {
  userAgent: string
  /** The lock's `providers` ("sandbox", "wechat"). */
  providers: string[]
  /** The lock's `wechat_oauth`: the cloud can run WeChat sign-in. */
  oauth: boolean
  /** The identity endpoint said this device session has an openid. */
  bound: boolean
}

export function payMode(c: PayContext): PayMode {
  if (!c.providers.includes('wechat')) {
    return 'sandbox'
  }
  if (!isWeChat(c.userAgent)) {
    return 'native'
  }
  if (!c.oauth) {
    // Inside WeChat without sign-in: WeChat can still read a QR code by long press.
    return 'native'
  }
  return c.bound ? 'jsapi' : 'oauth'
}

/** The provider to create the order with, for a mode ('oauth' creates no order). */
export function providerOf(mode: PayMode): 'wechat' | 'sandbox' {
  return mode === 'sandbox' ? 'sandbox' : 'wechat'
}

const PLAN_KEY = 'dmr.h5.wechatPlan'

/** Remembers the chosen plan across WeChat's sign-in redirect (one lock at a time). */
export function rememberPlan(qrCode: string, planId: string): void {
  try {
    globalThis.sessionStorage?.setItem(PLAN_KEY, JSON.stringify({ qrCode, planId }))
  } catch {
    // Not remembered: the first plan is preselected after the sign-in.
  }
}

/** The plan chosen before the sign-in redirect for this lock, once. */
export function takePlan(qrCode: string): string | null {
  try {
    const raw = globalThis.sessionStorage?.getItem(PLAN_KEY)
    globalThis.sessionStorage?.removeItem(PLAN_KEY)
    const v: unknown = raw ? JSON.parse(raw) : null
    if (v && typeof v === 'object' && 'qrCode' in v && 'planId' in v && v.qrCode === qrCode && typeof v.planId === 'string') {
      return v.planId
    }
  } catch {
    // Unreadable: no preselection.
  }
  return null
}
