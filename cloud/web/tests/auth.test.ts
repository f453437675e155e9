import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { SESSION_KEY, useAuthStore } from '@/console/stores/auth'
import { venuesApi } from '@/console/api/resources'
import { ApiError } from '@/shared/http'
import { apiError, mockFetch, tokens } from './helpers'

const PAGE = { items: [], page: 1, per_page: 20, total: 0 }

beforeEach(() => {
  localStorage.clear()
  setActivePinia(createPinia())
})
afterEach(() => vi.unstubAllGlobals())

async function loggedIn() {
  const auth = useAuthStore()
  auth.attach()
  mockFetch(() => ({ status: 200, body: tokens(1) }))
  await auth.login(' owner ', 'pw')
  return auth
}

describe('auth store', () => {
  it('logs in with username or phone and keeps the pair', async () => {
    const auth = useAuthStore()
    auth.attach()
    const calls = mockFetch(() => ({ status: 200, body: tokens(1) }))
    await auth.login(' 13800138000 ', 'secret-pw')
    expect(calls[0]).toMatchObject({ method: 'POST', url: '/api/v1/auth/login', auth: null })
    expect(calls[0]!.body).toEqual({ login: '13800138000', password: 'secret-pw' })
    expect(auth.isLoggedIn).toBe(true)
    expect(auth.role).toBe('merchant_owner')
    expect(auth.can('user:manage')).toBe(true)
    expect(auth.can('merchant:manage')).toBe(false)
    expect(JSON.parse(localStorage.getItem(SESSION_KEY)!).refreshToken).toBe('refresh-1')
  })

  it('shows the API message on a failed login', async () => {
    const auth = useAuthStore()
    auth.attach()
    mockFetch(() => ({ status: 401, body: apiError('invalid_credentials', 'login or password is wrong') }))
    await expect(auth.login('x', 'y')).rejects.toMatchObject({ code: 'invalid_credentials', status: 401 })
    expect(auth.isLoggedIn).toBe(false)
  })

  it('sends the access token, and on 401 refreshes once and retries', async () => {
    const auth = await loggedIn()
    const calls = mockFetch((c) => {
      if (c.url === '/api/v1/auth/refresh') return { status: 200, body: tokens(2) }
      return c.auth === 'Bearer access-2'
        ? { status: 200, body: PAGE }
        : { status: 401, body: apiError('unauthorized', 'authentication required: expired') }
    })
    await expect(venuesApi.list({ page: 1 })).resolves.toEqual(PAGE)
    expect(calls.map((c) => `${c.method} ${c.url} ${c.auth}`)).toEqual([
      'GET /api/v1/venues?page=1 Bearer access-1',
      'POST /api/v1/auth/refresh null',
      'GET /api/v1/venues?page=1 Bearer access-2',
    ])
    expect(calls[1]!.body).toEqual({ refresh_token: 'refresh-1' })
    expect(auth.refreshToken).toBe('refresh-2')
    expect(JSON.parse(localStorage.getItem(SESSION_KEY)!).accessToken).toBe('access-2')
  })

  it('shares one refresh among concurrent 401s (a refresh token is never presented twice)', async () => {
    await loggedIn()
    const calls = mockFetch(async (c) => {
      if (c.url === '/api/v1/auth/refresh') {
        await new Promise((r) => setTimeout(r, 10))
        return { status: 200, body: tokens(2) }
      }
      return c.auth === 'Bearer access-2' ? { status: 200, body: PAGE } : { status: 401, body: apiError('unauthorized', 'x') }
    })
    await Promise.all([venuesApi.list({}), venuesApi.list({}), venuesApi.list({})])
    expect(calls.filter((c) => c.url === '/api/v1/auth/refresh')).toHaveLength(1)
  })

  it('goes to login when the refresh fails', async () => {
    const auth = await loggedIn()
    const lost = vi.fn()
    auth.onAuthLost(lost)
    mockFetch((c) =>
      c.url === '/api/v1/auth/refresh'
        ? { status: 401, body: apiError('refresh_token_reused', 'reused') }
        : { status: 401, body: apiError('unauthorized', 'expired') },
    )
    await expect(venuesApi.list({})).rejects.toBeInstanceOf(ApiError)
    expect(lost).toHaveBeenCalledTimes(1)
    expect(auth.isLoggedIn).toBe(false)
    expect(localStorage.getItem(SESSION_KEY)).toBeNull()
  })

  it('goes to login when the retried request is refused again', async () => {
    const auth = await loggedIn()
    const lost = vi.fn()
    auth.onAuthLost(lost)
    mockFetch((c) =>
      c.url === '/api/v1/auth/refresh' ? { status: 200, body: tokens(2) } : { status: 401, body: apiError('unauthorized', 'x') },
    )
    await expect(venuesApi.list({})).rejects.toMatchObject({ status: 401 })
    expect(lost).toHaveBeenCalledTimes(1)
  })

  it('does not refresh on 403 (a permission, not a session, problem)', async () => {
    await loggedIn()
    const calls = mockFetch(() => ({ status: 403, body: apiError('forbidden', 'your role does not allow this', { permission: 'venue:write' }) }))
    await expect(venuesApi.create({ name: 'x' })).rejects.toMatchObject({ status: 403, code: 'forbidden' })
    expect(calls).toHaveLength(1)
  })

  it("adopts another tab's rotated pair instead of reusing the old refresh token", async () => {
    const auth = await loggedIn()
    localStorage.setItem(SESSION_KEY, JSON.stringify({ accessToken: 'access-9', refreshToken: 'refresh-9', user: auth.user }))
    const calls = mockFetch((c) => (c.auth === 'Bearer access-9' ? { status: 200, body: PAGE } : { status: 401, body: apiError('unauthorized', 'x') }))
    await venuesApi.list({})
    expect(calls.some((c) => c.url === '/api/v1/auth/refresh')).toBe(false)
    expect(auth.refreshToken).toBe('refresh-9')
  })

  it('logs out by revoking the refresh token', async () => {
    const auth = await loggedIn()
    const calls = mockFetch(() => ({ status: 204 }))
    await auth.logout()
    expect(calls[0]).toMatchObject({ method: 'POST', url: '/api/v1/auth/logout', body: { refresh_token: 'refresh-1' } })
    expect(auth.isLoggedIn).toBe(false)
  })

  it('ends the session after a password change', async () => {
    const auth = await loggedIn()
    const calls = mockFetch(() => ({ status: 204 }))
    await auth.changePassword('old-password', 'new-password')
    expect(calls[0]).toMatchObject({ url: '/api/v1/auth/password', auth: 'Bearer access-1' })
    expect(calls[0]!.body).toEqual({ current_password: 'old-password', new_password: 'new-password' })
    expect(auth.isLoggedIn).toBe(false)
  })

  it('restores the session from storage on reload', () => {
    localStorage.setItem(SESSION_KEY, JSON.stringify({ accessToken: 'a', refreshToken: 'r', user: tokens(1).user }))
    const auth = useAuthStore()
    expect(auth.isLoggedIn).toBe(true)
    expect(auth.accessToken).toBe('a')
  })
})
