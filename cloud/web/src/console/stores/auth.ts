/**
 * The console session: who is logged in and the token pair.
 *
 * The access token is short-lived; on a 401 the API client asks this store to rotate the
 * refresh token once (POST /auth/refresh) and retries. Concurrent 401s share one refresh, so
 * a burst of requests never presents the same refresh token twice (the server treats reuse
 * as theft and revokes every session of the login). The pair is kept in localStorage so a
 * reload stays logged in; another tab's rotation is picked up from there before refreshing.
 */
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api } from '@/console/api/client'
import { authApi } from '@/console/api/resources'
import type { TokenResponse, User } from '@/console/api/types'
import { can as roleCan, type Permission } from '@/shared/permissions'

export const SESSION_KEY = 'dmr.session'

interface StoredSession {
  accessToken: string
  refreshToken: string
  user: User
}

function readStored(): StoredSession | null {
  try {
    const raw = globalThis.localStorage?.getItem(SESSION_KEY)
    if (!raw) {
      return null
    }
    const s = JSON.parse(raw) as Partial<StoredSession>
    if (typeof s.accessToken === 'string' && typeof s.refreshToken === 'string' && s.user) {
      return s as StoredSession
    }
  } catch {
    // Corrupt or refused storage: start logged out.
  }
  return null
}

function writeStored(s: StoredSession | null): void {
  try {
    if (s) {
      globalThis.localStorage?.setItem(SESSION_KEY, JSON.stringify(s))
    } else {
      globalThis.localStorage?.removeItem(SESSION_KEY)
    }
  } catch {
    // The session then lasts only as long as this page.
  }
}

type AuthLostListener = () => void

export const useAuthStore = defineStore('auth', () => {
  const stored = readStored()
  const user = ref<User | null>(stored?.user ?? null)
  const accessToken = ref<string | null>(stored?.accessToken ?? null)
  const refreshToken = ref<string | null>(stored?.refreshToken ?? null)
  let refreshing: Promise<boolean> | null = null
  const authLostListeners: AuthLostListener[] = []

  const isLoggedIn = computed(() => user.value !== null && refreshToken.value !== null)
  const role = computed(() => user.value?.role ?? null)

  function can(perm: Permission): boolean {
    return roleCan(role.value, perm)
  }

  function adopt(t: TokenResponse): void {
    user.value = t.user
    accessToken.value = t.access_token
    refreshToken.value = t.refresh_token
    writeStored({ accessToken: t.access_token, refreshToken: t.refresh_token, user: t.user })
  }

  function clear(): void {
    user.value = null
    accessToken.value = null
    refreshToken.value = null
    writeStored(null)
  }

  async function login(loginName: string, password: string): Promise<void> {
    adopt(await authApi.login(loginName.trim(), password))
  }

  async function doRefresh(): Promise<boolean> {
    // Another tab may have rotated the pair already; using the old refresh token would be
    // reported as reuse, so take theirs.
    const other = readStored()
    if (other && other.refreshToken !== refreshToken.value) {
      user.value = other.user
      accessToken.value = other.accessToken
      refreshToken.value = other.refreshToken
      return true
    }
    const rt = refreshToken.value
    if (!rt) {
      return false
    }
    try {
      adopt(await authApi.refresh(rt))
      return true
    } catch {
      clear()
      return false
    }
  }

  /** Rotates the tokens; concurrent callers share one request. */
  function refresh(): Promise<boolean> {
    if (!refreshing) {
      refreshing = doRefresh().finally(() => {
        refreshing = null
      })
    }
    return refreshing
  }

  async function logout(): Promise<void> {
    const rt = refreshToken.value
    clear()
    if (rt) {
      // Best effort: the local session is gone either way.
      await authApi.logout(rt).catch(() => undefined)
    }
  }

  async function changePassword(current: string, next: string): Promise<void> {
    await authApi.changePassword(current, next)
    // The server bumps the session epoch: every access token of this user is now void.
    await logout()
  }

  async function reloadMe(): Promise<void> {
    const me = await authApi.me()
    user.value = me
    if (accessToken.value && refreshToken.value) {
      writeStored({ accessToken: accessToken.value, refreshToken: refreshToken.value, user: me })
    }
  }

  function onAuthLost(fn: AuthLostListener): void {
    authLostListeners.push(fn)
  }

  function authLost(): void {
    clear()
    for (const fn of authLostListeners) {
      fn()
    }
  }

  /** Connects the shared API client to this session. */
  function attach(): void {
    api.hooks = {
      accessToken: () => accessToken.value,
      refresh,
      onAuthLost: authLost,
    }
  }

  return {
    user,
    accessToken,
    refreshToken,
    isLoggedIn,
    role,
    can,
    login,
    refresh,
    logout,
    changePassword,
    reloadMe,
    clear,
    onAuthLost,
    attach,
  }
})
