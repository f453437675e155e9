#!/usr/bin/env node
// First-load benchmark: how long a cold browser takes to show the console and the phone
// page, served by dmr-cloud itself (server.web_dir = dist, its real caching headers) on
// loopback. Each run launches a fresh Chromium (new temporary profile: empty HTTP cache,
// no compiled-code cache) and measures, from navigation start (performance.timeOrigin),
// the moment the page is usable:
//   console-login      /login until the login form is rendered (an anonymous first visit)
//   console-dashboard  /dashboard with a session until the device counts are filled in
//   h5-lock            /h5/l/{code} until the price plans are listed (needs the public
//                      lock endpoint; on an older cloud: /h5/orders until its empty state)
//   baseline-/health   a tiny JSON document from the same server: the floor of browser and
//                      machine overhead in the same run (the machine is shared and busy)
// Prints medians, p90 and transferred bytes; usually run by scripts/bench-load.sh.
//
//   BENCH_BASE=http://127.0.0.1:8080 BENCH_ADMIN=ops BENCH_ADMIN_PASSWORD=... node scripts/bench-load.mjs
import { chromium } from 'playwright-core'

const BASE = process.env.BENCH_BASE ?? 'http://127.0.0.1:8080'
const RUNS = Number(process.env.BENCH_RUNS ?? 15)
const ADMIN = process.env.BENCH_ADMIN ?? 'ops'
const ADMIN_PASSWORD = process.env.BENCH_ADMIN_PASSWORD ?? ''

async function api(method, path, body, token) {
  const r = await fetch(BASE + path, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await r.text()
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`)
  return text ? JSON.parse(text) : null
}

// Data to show: a merchant with a venue, a gateway and a lock with two plans.
const session = await api('POST', '/api/v1/auth/login', { login: ADMIN, password: ADMIN_PASSWORD })
const tok = session.access_token
const tag = Date.now().toString(36)
const m = await api('POST', '/api/v1/merchants', { name: `bench-${tag}`, commission_bp: 500 }, tok)
const v = await api('POST', '/api/v1/venues', { name: 'Bench venue', address: 'Loopback 1', merchant_id: m.id }, tok)
const g = await api('POST', '/api/v1/gateways', { venue_id: v.id, name: 'Bench gateway' }, tok)
const lock = await api(
  'POST',
  '/api/v1/locks',
  {
    gateway_id: g.id,
    device_code: `BENCH-${tag}`,
    bus_address: 3,
    name: 'Bench lock',
    price_plans: [
      { name: '1 小时', duration_minutes: 60, price_fen: 300 },
      { name: '3 小时', duration_minutes: 180, price_fen: 800 },
    ],
  },
  tok,
)
const publicLock = await fetch(`${BASE}/api/v1/public/locks/${lock.qr_code}`)
const h5 = publicLock.ok
  ? { name: 'h5-lock', path: `/h5/l/${lock.qr_code}`, ready: '.van-radio' }
  : { name: 'h5-my-orders (no public lock API on this cloud)', path: '/h5/orders', ready: '.van-empty' }

const stored = JSON.stringify({ accessToken: session.access_token, refreshToken: session.refresh_token, user: session.user })
const cases = [
  // The floor on this machine at this moment: a tiny JSON page from the same server.
  { name: 'baseline-/health', path: '/health', ready: 'body', viewport: { width: 1280, height: 800 } },
  { name: 'console-login', path: '/login', ready: 'input[name=login]', viewport: { width: 1280, height: 800 } },
  {
    name: 'console-dashboard',
    path: '/dashboard',
    // The counts are rendered once every list call answered.
    ready: '[data-testid=count-locks]',
    viewport: { width: 1280, height: 800 },
    session: true,
  },
  { ...h5, viewport: { width: 390, height: 844 }, mobile: true },
]

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { median: q(0.5), p90: q(0.9), min: s[0], max: s[s.length - 1] }
}

const results = {}
for (const c of cases) results[c.name] = { ready: [], dcl: [], bytes: [] }
for (let i = 0; i < RUNS; i++) {
  for (const c of cases) {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu'],
    })
    const ctx = await browser.newContext({ viewport: c.viewport, isMobile: !!c.mobile, hasTouch: !!c.mobile })
    if (c.session) {
      await ctx.addInitScript((s) => localStorage.setItem('dmr.session', s), stored)
    }
    const page = await ctx.newPage()
    await page.goto(BASE + c.path, { waitUntil: 'commit' })
    const ready = await page.waitForFunction(
      (sel) => {
        const el = document.querySelector(sel)
        return el && el.getBoundingClientRect().height > 0 && (el.textContent ?? '').trim() !== '…' ? performance.now() : null
      },
      c.ready,
      { polling: 'raf', timeout: 20_000 },
    )
    const readyMs = await ready.jsonValue()
    const nav = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0]
      const res = performance.getEntriesByType('resource')
      return {
        dcl: n.domContentLoadedEventEnd,
        bytes: n.transferSize + res.reduce((sum, r) => sum + (r.transferSize || 0), 0),
      }
    })
    results[c.name].ready.push(readyMs)
    results[c.name].dcl.push(nav.dcl)
    results[c.name].bytes.push(nav.bytes)
    await browser.close()
  }
}

console.log(`first load, ${RUNS} cold runs each, ${BASE}`)
for (const [name, r] of Object.entries(results)) {
  const s = stats(r.ready)
  const d = stats(r.dcl)
  const kb = (stats(r.bytes).median / 1024).toFixed(0)
  console.log(
    `${name.padEnd(20)} ready median ${s.median.toFixed(0)} ms (p90 ${s.p90.toFixed(0)}, min ${s.min.toFixed(0)}, max ${s.max.toFixed(0)}); ` +
      `DOMContentLoaded median ${d.median.toFixed(0)} ms; transferred ${kb} KB`,
  )
}
