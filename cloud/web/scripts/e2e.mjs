#!/usr/bin/env node
// Browser walk-through of the whole issue-7 scenario against a real dmr-cloud (behind
// `vite preview`, or the cloud itself serving dist/). Uses Debian's chromium through
// playwright-core (never a downloaded browser). Creates its own merchants, users, venue,
// gateway, enrollment code and lock with unique names, checks what the API stored, and
// fails on any unexpected browser or HTTP error. Usually run by scripts/e2e.sh.
//
//   E2E_BASE=http://127.0.0.1:4173 E2E_ADMIN=ops E2E_ADMIN_PASSWORD=... node scripts/e2e.mjs
//
// Screenshots of every main page go to E2E_SHOTS (default e2e-shots/<run id>/).
//
// GATES. Parts of the scenario need features that land in other branches; each is behind
// an environment variable and, when it is not set, is printed as "SKIP" and listed under
// "NOT RUN" at the end — it is never counted as passed. E2E_REQUIRE_FULL=1 makes any
// skipped part a failure.
//   E2E_ORDERS=1  the cloud serves orders/payments (sandbox provider): H5 pay flow, console
//                 orders/detail/history/revenue, automatic refund reaching the ledger,
//                 settlements and reconciliation pages.
//   E2E_LINK=1    a real dmr-agent and dmr-lock-sim are attached (the live feed, alarms
//                 and gateway commands are served): E2E_LINK_UP is a shell command run
//                 with ENROLL_CODE, LOCK_DEVICE_CODE, LOCK_BUS_ADDRESS, CLOUD_URL in its
//                 environment that must enroll the agent and start it with the simulated
//                 lock (scripts/e2e.sh provides one when AGENT_BIN and SIM_BIN are set);
//                 then: lock online in the console, the simulated lock receives the unlock
//                 (its latch's actuation counter, from the simulator's control API),
//                 staff unlock, refund from the console reaching the ledger.
// scripts/test.sh runs it with E2E_ORDERS=1 E2E_LINK=1 E2E_REQUIRE_FULL=1.
import { execSync } from 'node:child_process'
import { createHash, createPrivateKey, sign } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { chromium } from 'playwright-core'

const BASE = process.env.E2E_BASE ?? 'http://127.0.0.1:4173'
const ADMIN = process.env.E2E_ADMIN ?? 'ops'
const ADMIN_PASSWORD = process.env.E2E_ADMIN_PASSWORD ?? ''
const run = Date.now().toString(36)
const SHOTS = process.env.E2E_SHOTS ?? `e2e-shots/${new Date().toISOString().replace(/[:.]/g, '-')}`
mkdirSync(SHOTS, { recursive: true })
const GATES = { orders: process.env.E2E_ORDERS === '1', link: process.env.E2E_LINK === '1' }

let passed = 0
const skipped = []
function check(cond, what) {
  if (!cond) throw new Error(`E2E FAILED: ${what}`)
  passed++
  console.log(`ok - ${what}`)
}
/** True when the gate is open; otherwise records the step as NOT RUN. */
function gate(name, what) {
  if (GATES[name]) return true
  skipped.push(`${what} [E2E_${name.toUpperCase()}]`)
  console.log(`SKIP - ${what} (gated: set E2E_${name.toUpperCase()}=1)`)
  return false
}
async function until(fn, what, timeoutMs = 20_000, stepMs = 250) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await fn().catch(() => undefined)
    if (v) return v
    if (Date.now() > end) throw new Error(`E2E FAILED: timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, stepMs))
  }
}

/** Waits for the form's messages to render, then counts them. */
async function formErrors(scope) {
  await scope.locator('.el-form-item.is-error').first().waitFor({ timeout: 3000 }).catch(() => undefined)
  return scope.locator('.el-form-item.is-error').count()
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
})
const errors = []
const external = []
// Endpoints of features behind a closed gate answer 404 on this server: expected.
const gatedPaths = [
  ...(GATES.orders ? [] : [/^\/api\/v1\/dashboard\/summary$/, /^\/api\/v1\/public\//, /^\/api\/v1\/orders/, /^\/api\/v1\/settlements/, /^\/api\/v1\/reconciliation/]),
  ...(GATES.link ? [] : [/^\/api\/v1\/live$/, /^\/api\/v1\/alarms/, /^\/api\/v1\/gateways\/[^/]+\/commands$/]),
]
// Requests the test makes on purpose to see a refusal.
const expectedRefusals = new Set()
async function newPage(viewport, opts = {}) {
  const page = await browser.newPage({ viewport, ...opts })
  page.on('pageerror', (e) => errors.push(String(e)))
  page.on('request', (r) => {
    const u = new URL(r.url())
    if (u.protocol.startsWith('http') && !['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)) external.push(r.url())
  })
  page.on('response', (r) => {
    const p = new URL(r.url()).pathname
    const s = r.status()
    const expected =
      (s === 401 && p.endsWith('/auth/login')) ||
      (s === 404 && gatedPaths.some((re) => re.test(p))) ||
      expectedRefusals.has(`${s} ${p}`)
    if (s >= 400 && !expected) errors.push(`${s} ${r.request().method()} ${p}`)
  })
  return page
}
/**
 * A signed firmware image in the dmr_protocol::firmware format (PROTOCOL.md §5), as
 * `dmr-tech fw sign` builds it: 52 signed header bytes, the Ed25519 signature over
 * "DMR-FIRMWARE/1\0" + those bytes, then the payload. Hardware type 1 (lock controller).
 */
function firmwareImage(version, payload, keyId, key) {
  const [major, minor, patch] = version.split('.').map(Number)
  const h = Buffer.alloc(52)
  h.write('DMRF', 0, 'latin1')
  h[4] = 1
  h[5] = 1
  h[8] = major
  h[9] = minor
  h.writeUInt16BE(patch, 10)
  h.writeUInt32BE(payload.length, 12)
  createHash('sha256').update(payload).digest().copy(h, 16)
  h.writeUInt32BE(keyId, 48)
  const sig = sign(null, Buffer.concat([Buffer.from('DMR-FIRMWARE/1\0', 'latin1'), h]), key)
  return Buffer.concat([h, sig, payload])
}

const shot = (page, name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true })

/** Calls the API with the page's session (whoever is logged in there). */
function apiAs(page) {
  return (method, path, body) =>
    page.evaluate(
      async ([m, p, b]) => {
        const s = JSON.parse(localStorage.getItem('dmr.session'))
        const r = await fetch(p, {
          method: m,
          headers: { Authorization: `Bearer ${s.accessToken}`, 'Content-Type': 'application/json' },
          body: b === undefined ? undefined : JSON.stringify(b),
        })
        const text = await r.text()
        return { status: r.status, body: text ? JSON.parse(text) : null }
      },
      [method, path, body],
    )
}

async function login(page, user, password) {
  await page.goto(`${BASE}/login`)
  await page.fill('input[name=login]', user)
  await page.fill('input[name=password]', password)
  await page.click('button[type=submit]')
  await page.waitForURL((u) => !u.pathname.endsWith('/login'))
}
async function logout(page) {
  await page.click('.header-right .el-dropdown >> nth=1')
  await page.click('.el-dropdown-menu__item:has-text("退出登录")')
  await page.waitForURL('**/login')
}

try {
  const page = await newPage({ width: 1280, height: 800 })
  const api = apiAs(page)
  const dialog = () => page.locator('.el-dialog:visible')
  const pick = async (selectIndex, text) => {
    await dialog().locator('.el-select').nth(selectIndex).click()
    await page.locator(`.el-select-dropdown__item:visible:has-text("${text}")`).first().click()
  }
  const menu = (label) => page.click(`.el-aside .el-menu-item:has-text("${label}")`)

  // 1. Login: client-side validation, server message in place, then success.
  await page.goto(`${BASE}/`)
  await page.waitForURL('**/login')
  await page.click('button[type=submit]')
  check((await formErrors(page)) === 2, 'empty login is refused before sending')
  await shot(page, '01-login')
  await page.fill('input[name=login]', ADMIN)
  await page.fill('input[name=password]', 'wrong-password-!')
  await page.click('button[type=submit]')
  await page.waitForSelector('.el-alert--error')
  check((await page.locator('.el-alert--error').innerText()).length > 0, 'bad password shows the API message')
  await page.fill('input[name=password]', ADMIN_PASSWORD)
  await page.click('button[type=submit]')
  await page.waitForURL('**/dashboard')
  check(await page.locator('.el-menu-item:has-text("商户")').isVisible(), 'platform admin sees the merchants menu (zh-CN default)')
  check(await page.locator('.el-menu-item:has-text("对账")').isVisible(), 'platform admin sees reconciliation')

  // 2. Merchant with commission in percent.
  const merchant = `E2E商户-${run}`
  await menu('商户')
  await page.click('button:has-text("新建商户")')
  await dialog().locator('input').nth(0).fill(merchant)
  await dialog().locator('input').nth(2).fill('200')
  await dialog().locator('button:has-text("保存")').click()
  check((await formErrors(dialog())) === 1, '200% commission is refused in the form')
  await dialog().locator('input').nth(2).fill('5.5')
  await dialog().locator('button:has-text("保存")').click()
  await page.fill('input[placeholder="按名称搜索"]', merchant)
  await page.press('input[placeholder="按名称搜索"]', 'Enter')
  await page.waitForSelector(`td:has-text("${merchant}")`)
  check((await page.locator('.el-table__body tr').first().innerText()).includes('5.5%'), 'commission shown as 5.5%')
  await shot(page, '02-merchants')

  // 3. Owner of that merchant.
  const owner = `e2e-owner-${run}`
  const ownerPassword = `pw-${run}-secret`
  await menu('用户与角色')
  await page.click('button:has-text("新建用户")')
  await dialog().locator('input').nth(0).fill(owner)
  await dialog().locator('input').nth(1).fill('E2E 店长')
  await pick(0, '商户负责人')
  await pick(1, merchant)
  await dialog().locator('input[type=password]').fill(ownerPassword)
  await dialog().locator('button:has-text("保存")').click()
  await page.fill('input[placeholder="按用户名、姓名或手机号搜索"]', owner)
  await page.press('input[placeholder="按用户名、姓名或手机号搜索"]', 'Enter')
  await page.waitForSelector(`td:has-text("${owner}")`)
  check(true, 'owner created')
  await shot(page, '03-users')

  // 4. Another merchant and its staff user (for the tenant-isolation check), through the API.
  const other = await api('POST', '/api/v1/merchants', { name: `E2E其他商户-${run}`, commission_bp: 300 })
  check(other.status === 201, 'second merchant created')
  const staff = `e2e-staff-${run}`
  const staffPassword = `pw-${run}-staff`
  const su = await api('POST', '/api/v1/users', {
    username: staff,
    password: staffPassword,
    display_name: 'E2E 其他店员',
    role: 'merchant_staff',
    merchant_id: other.body.id,
  })
  check(su.status === 201, 'staff user of the second merchant created')
  await logout(page)

  // 5. As the owner: venue, gateway, enrollment code, lock with plans in yuan.
  await login(page, owner, ownerPassword)
  await page.waitForURL('**/dashboard')
  check(!(await page.locator('.el-menu-item:has-text("商户")').isVisible()), 'owner does not see the merchants menu')
  check(!(await page.locator('.el-menu-item:has-text("对账")').isVisible()), 'owner does not see reconciliation')
  await menu('场地')
  await page.click('button:has-text("新建场地")')
  await dialog().locator('button:has-text("保存")').click()
  check((await formErrors(dialog())) === 1, 'venue without a name is refused')
  await dialog().locator('input').first().fill('E2E 场地')
  await dialog().locator('button:has-text("保存")').click()
  await page.waitForSelector('td:has-text("E2E 场地")')
  await shot(page, '04-venues')

  await menu('网关')
  await page.click('button:has-text("新建网关")')
  await pick(0, 'E2E 场地')
  await dialog().locator('input').nth(1).fill('E2E 网关')
  await dialog().locator('button:has-text("保存")').click()
  await page.waitForSelector('td:has-text("E2E 网关")')
  const headers = await page.locator('.el-table__header').first().innerText()
  check(['连接', '健康', '待上传'].every((h) => headers.includes(h)), 'gateway list shows its three health signals')
  await shot(page, '05-gateways')
  await page.click('.el-tabs__item:has-text("注册码")')
  await page.click('button:has-text("生成注册码")')
  await pick(0, 'E2E 场地')
  // The code names the gateway made above, so the enrolled board takes over its locks.
  await pick(1, 'E2E 网关')
  await dialog().locator('button:has-text("新建")').click()
  await page.waitForSelector('[data-testid=enrollment-code]')
  const enrollCode = await page.locator('[data-testid=enrollment-code]').innerText()
  await dialog().locator('img.qr').waitFor({ timeout: 5000 }).catch(() => undefined)
  check(/^[2-9A-Z]{5}-[2-9A-Z]{5}$/.test(enrollCode) && (await dialog().locator('img.qr').count()) === 1, `enrollment code ${enrollCode} shown with its QR code`)
  await shot(page, '06-enrollment')
  await dialog().locator('button:has-text("关闭")').click()

  const deviceCode = `E2E-${run}`
  await menu('智能锁')
  await page.click('button:has-text("新建智能锁")')
  await pick(0, 'E2E 网关')
  await dialog().locator('input').nth(1).fill(deviceCode)
  await dialog().locator('input').nth(2).fill('7')
  await dialog().locator('button:has-text("添加方案")').click()
  await dialog().locator('button:has-text("添加方案")').click()
  const rows = dialog().locator('[data-testid=plan-row]')
  await rows.nth(0).locator('input').nth(0).fill('1 小时')
  await rows.nth(0).locator('input').nth(2).fill('0.29')
  await rows.nth(1).locator('input').nth(0).fill('3 小时')
  await rows.nth(1).locator('input').nth(1).fill('180')
  await rows.nth(1).locator('input').nth(2).fill('1.234')
  await dialog().locator('button:has-text("保存")').click()
  check((await formErrors(dialog())) === 1, 'a price with three decimals is refused')
  await rows.nth(1).locator('input').nth(2).fill('12.5')
  await dialog().locator('button:has-text("保存")').click()
  await page.waitForSelector(`td:has-text("${deviceCode}")`)
  const row = await page.locator('.el-table__body tr').first().innerText()
  check(row.includes('¥0.29') && row.includes('¥12.50'), 'plans listed in yuan')
  const lockHeaders = await page.locator('.el-table__header').first().innerText()
  check(['门', '锁舌', '固件', '心跳'].every((h) => lockHeaders.includes(h)), 'lock list shows door, latch, firmware and heartbeat')
  await shot(page, '07-locks')
  await page.click('button:has-text("二维码")')
  await page.waitForSelector('.print-area img.qr')
  check((await page.locator('.print-area').innerText()).includes('/q/'), 'lock QR label carries the qr_payload URL')
  await shot(page, '08-lock-qr')
  await dialog().locator('button:has-text("关闭")').click()
  await page.locator('.el-overlay-dialog[aria-label="打印二维码"]').waitFor({ state: 'hidden' })

  // What the API stored: fen.
  const found = await api('GET', `/api/v1/locks?q=${deviceCode}`)
  const lock = found.body.items[0]
  check(JSON.stringify(lock.price_plans.map((p) => p.price_fen)) === '[29,1250]', `API stored fen ${JSON.stringify(lock.price_plans.map((p) => p.price_fen))}`)

  // 6. The link: agent enrolled with the code, simulated lock online, live in the console.
  if (gate('link', 'agent + lock-sim attached; the merchant sees the lock online (live SSE)')) {
    const up = process.env.E2E_LINK_UP
    if (!up) throw new Error('E2E FAILED: E2E_LINK=1 needs E2E_LINK_UP (a command that starts agent + sim)')
    execSync(up, {
      stdio: 'inherit',
      env: { ...process.env, ENROLL_CODE: enrollCode, LOCK_DEVICE_CODE: deviceCode, LOCK_BUS_ADDRESS: '7', CLOUD_URL: BASE },
    })
    await menu('智能锁')
    await page.waitForSelector(`td:has-text("${deviceCode}")`)
    await until(async () => (await page.locator('[data-testid=lock-status]').first().innerText()).includes('在线'), 'the lock online (live)', 60_000)
    check(true, 'the merchant sees the lock online')
    await shot(page, '09-locks-online')
    await menu('概览')
    await until(async () => Number(await page.locator('[data-testid=locks-online]').innerText()) >= 1, 'dashboard locks online')
    check(true, 'dashboard counts the lock online')
    await menu('网关')
    await until(async () => (await page.locator('[data-testid=gateway-link]').first().innerText()).includes('在线'), 'gateway link up')
    check(true, 'gateway link signal is up')
    await menu('告警')
    await page.waitForSelector('h2:has-text("告警")')
    await shot(page, '10-alarms')
  }

  if (!GATES.link) {
    // Named here so the summary lists every step the closed gate leaves out.
    gate('link', 'H5 shows the lock opened and the simulated lock receives the unlock')
    gate('link', 'refund from the console (reason, amount) reaches the ledger')
    gate('link', 'staff unlock from the locks page')
  }

  // 7. The phone: lock page → pay in the sandbox → live progress → my orders.
  const h5 = await newPage({ width: 390, height: 844 }, { isMobile: true, hasTouch: true, deviceScaleFactor: 2 })
  let orderId = null
  if (gate('orders', 'H5: lock page, sandbox payment, live progress, my orders')) {
    await h5.goto(`${BASE}/h5/l/${lock.qr_code}`)
    await h5.waitForSelector('.van-radio')
    const text = await h5.locator('.h5-page').innerText()
    check(text.includes('E2E 场地') && text.includes('¥12.50'), 'H5 lock page shows the venue and the plans in yuan')
    await shot(h5, '20-h5-lock')
    await h5.locator('.van-cell:has-text("3 小时")').click()
    await h5.click('.pay-bar button')
    await h5.waitForURL('**/pay/sandbox/**')
    await shot(h5, '21-h5-sandbox')
    // Confirming returns by itself to the order page pushed before leaving for the sandbox,
    // and the sandbox does not stay in the history: one "back" from the order page goes to
    // the lock page (it used to take two presses to get off the sandbox's pages).
    await h5.click('button[type=submit]')
    await h5.waitForURL('**/h5/o/**')
    orderId = new URL(h5.url()).pathname.split('/').pop()
    await h5.waitForSelector('[data-testid=order-status]')
    check(true, `order ${orderId.slice(0, 8)} paid in the sandbox, back on its live page without pressing back`)
    await h5.goBack()
    await h5.waitForURL('**/h5/l/**')
    check(new URL(h5.url()).pathname === `/h5/l/${lock.qr_code}`, 'a single back from the order page leaves for the lock page (sandbox not in the history)')
    await h5.goForward()
    await h5.waitForURL('**/h5/o/**')
    await h5.waitForSelector('[data-testid=order-status]')
    if (GATES.link) {
      await until(async () => /已开锁|已完成/.test(await h5.locator('[data-testid=order-status]').innerText()), 'H5 shows unlocked', 30_000)
      check(true, 'H5 shows the lock opened (live)')
      // The simulator (started by E2E_LINK_UP) prints its control API; its lock's
      // `actuations` counter proves the latch physically moved.
      const simOut = process.env.E2E_WORK ? `${process.env.E2E_WORK}/gateway/sim.out` : ''
      const control = simOut && existsSync(simOut) ? /^CONTROL (\S+)/m.exec(readFileSync(simOut, 'utf8'))?.[1] : undefined
      if (control) {
        await until(async () => {
          const r = await fetch(`${control}/locks/7`)
          return r.ok && (await r.json()).actuations >= 1
        }, 'the simulated latch to move')
        check(true, 'the simulated lock received the unlock (its latch moved)')
      } else {
        skipped.push('simulated lock received the unlock [no simulator control API]')
        console.log('SKIP - simulated lock received the unlock (no simulator control API found)')
      }
    } else {
      // No gateway attached: the order stays "unlocking"; after a short wait the page offers
      // the offline unlock token as a QR code.
      await h5.waitForSelector('[data-testid=offline-token] img.qr', { timeout: 40_000 })
      check(true, 'gateway offline: H5 shows the offline unlock token as a QR code')
    }
    await shot(h5, '22-h5-order')
    await h5.click('button:has-text("我的订单")')
    await h5.waitForSelector('[data-testid=my-orders]')
    check((await h5.locator('[data-testid=my-orders] .van-cell').count()) >= 1, 'H5 my orders lists the order (device session)')
    await shot(h5, '23-h5-my-orders')
  } else {
    await h5.goto(`${BASE}/h5/orders`)
    await h5.waitForSelector('.van-empty')
    check(true, 'H5 my-orders page renders')
    await shot(h5, '23-h5-my-orders')
  }

  // 8. The console: the order, its history, the revenue; a refund reaching the ledger.
  if (gate('orders', 'console: order list, full history, revenue, refund in the ledger') && orderId) {
    await menu('订单')
    await page.waitForSelector(`a:has-text("${orderId.slice(0, 8)}")`)
    check(true, 'the order is listed in the console')
    await shot(page, '30-orders')
    await page.click(`a:has-text("${orderId.slice(0, 8)}")`)
    await page.waitForSelector('[data-testid=order-timeline]')
    const tl = await page.locator('[data-testid=order-timeline]').innerText()
    check(tl.includes('待支付') && tl.includes('已支付'), 'order detail shows the transition history')
    await shot(page, '31-order-detail')
    await menu('概览')
    await until(async () => (await page.locator('[data-testid=today-revenue]').innerText()).includes('12.50') || Number(await page.locator('[data-testid=today-orders]').innerText()) >= 1, 'revenue on the dashboard')
    check(true, 'dashboard shows today\'s revenue and orders')
    await page.waitForSelector('[data-testid=trend-chart] canvas')
    await shot(page, '32-dashboard')
    if (GATES.link) {
      await page.goto(`${BASE}/orders/${orderId}`)
      await page.click('button:has-text("退款")')
      await dialog().locator('input[name=amount]').fill('99')
      await dialog().locator('button:has-text("确认退款")').click()
      check((await formErrors(dialog())) === 2, 'refund over the paid amount and without a reason is refused in place')
      await dialog().locator('input[name=amount]').fill('1.00')
      await dialog().locator('textarea[name=reason]').fill('E2E 部分退款')
      await dialog().locator('button:has-text("确认退款")').click()
      await page.waitForSelector('[data-testid=order-refunds] td:has-text("E2E 部分退款")')
      const ledger = await until(async () => {
        const d = await api('GET', `/api/v1/orders/${orderId}`)
        const r = (d.body.refunds ?? []).find((x) => x.reason === 'E2E 部分退款')
        return r && r.status === 'succeeded' && d.body.refunded_fen >= 100 ? d.body : null
      }, 'the refund to succeed', 30_000)
      check(ledger.refunded_fen >= 100, `refund of ¥1.00 reached the ledger (refunded_fen ${ledger.refunded_fen})`)
    } else {
      // Without a gateway the unlock fails and the whole amount is refunded automatically.
      const auto = await until(async () => {
        const d = await api('GET', `/api/v1/orders/${orderId}`)
        return d.body.refunded_fen === 1250 && (d.body.refunds ?? []).some((r) => r.status === 'succeeded') ? d.body : null
      }, 'the automatic refund', 90_000, 1000)
      check(auto.status === 'refunded', 'gateway offline: the unlock failed and the refund reached the ledger')
      await page.goto(`${BASE}/orders/${orderId}`)
      await page.waitForSelector('[data-testid=order-refunds] .el-table__row')
      await shot(page, '33-order-refunded')
    }
    await menu('结算')
    await page.waitForSelector('h2:has-text("结算")')
    await page.waitForSelector('.el-table, .el-empty')
    check(!(await page.locator('.el-result').count()), 'settlements load (no error state)')
    await shot(page, '34-settlements')
  }
  if (GATES.link) {
    await menu('智能锁')
    await page.waitForSelector(`td:has-text("${deviceCode}")`)
    await page.click('[data-testid=staff-unlock]')
    await page.click('.el-message-box button:has-text("开锁")')
    await page.waitForSelector('.el-message--success')
    check(true, 'staff unlock sent')
  }
  await logout(page)

  // 9. Tenant isolation: a staff user of another merchant cannot see this lock.
  await login(page, staff, staffPassword)
  await menu('智能锁')
  await page.waitForSelector('.el-empty, .el-table__row')
  check(!(await page.locator(`td:has-text("${deviceCode}")`).count()), "another merchant's staff does not see the lock in the list")
  expectedRefusals.add(`404 /api/v1/locks/${lock.id}`)
  const peek = await api('GET', `/api/v1/locks/${lock.id}`)
  check(peek.status === 404, `…and gets 404 asking for it by id (got ${peek.status})`)
  check(!(await page.locator('.el-menu-item:has-text("用户与角色")').isVisible()), 'staff does not see users and roles')
  await shot(page, '40-other-staff-locks')
  await logout(page)

  // 10. Platform admin: reconciliation reports.
  if (gate('orders', 'platform admin: reconciliation reports page')) {
    await login(page, ADMIN, ADMIN_PASSWORD)
    await menu('对账')
    await page.waitForSelector('h2:has-text("对账")')
    await page.waitForSelector('.el-table, .el-empty')
    check(!(await page.locator('.el-result').count()), 'reconciliation reports load (no error state)')
    await shot(page, '41-reconciliation')
    // Reports exist once a day has been reconciled; when one is listed, its differences open.
    if (await page.locator('[data-test=report-items]').count()) {
      await page.locator('[data-test=report-items]').first().click()
      await page.waitForSelector('.reconciliation-items .el-table, .reconciliation-items .el-empty')
      await page.waitForTimeout(500) // the drawer slides in
      check(!(await page.locator('.reconciliation-items .el-result').count()), 'a report\'s differences open in the drawer')
      await shot(page, '42-reconciliation-items')
      await page.keyboard.press('Escape')
    }
    await logout(page)
  }

  // 11. Platform admin: firmware releases (the vendor key comes from scripts/e2e.sh).
  if (process.env.E2E_FW_KEY) {
    const key = createPrivateKey({ key: Buffer.from(process.env.E2E_FW_KEY, 'base64'), format: 'der', type: 'pkcs8' })
    const keyId = Number(process.env.E2E_FW_KEY_ID ?? 7)
    const version = `2.${Number.parseInt(run.slice(-3), 36) % 250}.7`
    const payload = Buffer.alloc(4096, 0xa5)
    const good = firmwareImage(version, payload, keyId, key)
    const tampered = Buffer.from(good)
    tampered[200] ^= 0x01
    await login(page, ADMIN, ADMIN_PASSWORD)
    await menu('固件')
    await page.waitForSelector('h2:has-text("固件发布")')
    await page.click('[data-test=firmware-upload]')
    const dialog = page.locator('.firmware-upload')
    expectedRefusals.add('422 /api/v1/firmware-releases')
    await dialog.locator('[data-test=firmware-file]').setInputFiles({ name: 'tampered.bin', mimeType: 'application/octet-stream', buffer: tampered })
    await dialog.locator('[data-test=firmware-submit]').click()
    await dialog.locator('.el-form-item__error').first().waitFor()
    const err = await dialog.locator('.el-form-item__error').first().innerText()
    check(err.includes('SHA-256'), `a tampered image is refused, the reason under the file field (${err.replace(/\s+/g, ' ').trim()})`)
    await shot(page, '45-firmware-refused')
    await dialog.locator('[data-test=firmware-file]').setInputFiles({ name: 'good.bin', mimeType: 'application/octet-stream', buffer: good })
    await dialog.locator('[data-test=firmware-version]').fill(version)
    await dialog.locator('[data-test=firmware-notes]').fill('E2E 门磁去抖')
    await dialog.locator('[data-test=firmware-submit]').click()
    await page.waitForSelector(`.el-table__row:has-text("${version}")`)
    check(true, `the signed image ${version} is published and listed`)
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.locator(`.el-table__row:has-text("${version}") [data-test=firmware-download]`).click(),
    ])
    const saved = readFileSync(await download.path())
    check(saved.equals(good), `the download is the uploaded image byte for byte (${download.suggestedFilename()})`)
    await page.waitForTimeout(500) // tags and the message settle
    await shot(page, '46-firmware')
    await logout(page)
  } else {
    skipped.push('firmware releases page [E2E_FW_KEY]')
    console.log('SKIP - firmware releases page (no E2E_FW_KEY vendor key)')
  }

  // 12. Phone layout and English.
  await login(page, owner, ownerPassword)
  await page.setViewportSize({ width: 390, height: 800 })
  await page.click('.header button[aria-label=menu]')
  await page.click('.el-drawer .el-menu-item:has-text("场地")')
  await page.click('button[aria-label="语言"]')
  await page.click('.el-dropdown-menu__item:has-text("English")')
  await page.waitForSelector('h2:has-text("Venues")')
  check(true, 'phone drawer navigation and English switch')
  await shot(page, '50-phone-venues-en')

  check(external.length === 0, `no request left the machine ${JSON.stringify(external)}`)
  check(errors.length === 0, `no unexpected browser or HTTP errors ${JSON.stringify(errors)}`)
  console.log(`screenshots: ${SHOTS}`)
  if (skipped.length > 0) {
    console.log(`E2E PASSED ${passed} checks; NOT RUN (gated, not passed): ${skipped.length}`)
    for (const s of skipped) console.log(`  not run: ${s}`)
    if (process.env.E2E_REQUIRE_FULL === '1') {
      console.log('E2E FAILED: E2E_REQUIRE_FULL=1 and parts were not run')
      process.exitCode = 1
    }
  } else {
    console.log(`E2E OK: the whole scenario, ${passed} checks`)
  }
} finally {
  await browser.close()
}
