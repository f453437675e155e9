/**
 * Carrying out the payment step the (PENDING) create-order endpoint returns: a redirect
 * (sandbox provider, H5 pay pages) or WeChat's in-app JSAPI when the page runs inside
 * WeChat. Resolves 'paid' when the provider says so, 'redirected' when the page is leaving,
 * 'cancelled' or 'failed' otherwise; the order page then shows the server's truth.
 */
import type { PaymentStep } from './api'

interface WeixinJSBridge {
  invoke(api: 'getBrandWCPayRequest', params: Record<string, string>, cb: (res: { err_msg: string }) => void): void
}

declare global {
  interface Window {
    WeixinJSBridge?: WeixinJSBridge
  }
}

export type PayOutcome = 'paid' | 'redirected' | 'cancelled' | 'failed' | 'none'

export function pay(step: PaymentStep, win: Window = window): Promise<PayOutcome> {
  if (step.redirect_url) {
    win.location.href = step.redirect_url
    return Promise.resolve('redirected')
  }
  if (step.jsapi) {
    const bridge = win.WeixinJSBridge
    if (!bridge) {
      return Promise.resolve('failed')
    }
    const params = step.jsapi
    return new Promise((resolve) => {
      bridge.invoke('getBrandWCPayRequest', params, (res) => {
        // WeChat's documented results; only the server's notification makes an order paid.
        if (res.err_msg === 'get_brand_wcpay_request:ok') resolve('paid')
        else if (res.err_msg === 'get_brand_wcpay_request:cancel') resolve('cancelled')
        else resolve('failed')
      })
    })
  }
  return Promise.resolve('none')
}
