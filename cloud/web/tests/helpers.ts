import { vi } from 'vitest'

export interface Call {
  method: string
  url: string
  auth: string | null
  body: unknown
}

export type Responder = (call: Call) => { status: number; body?: unknown } | Promise<{ status: number; body?: unknown }>

/** Replaces fetch with a scripted server; returns the calls it saw. */
export function mockFetch(respond: Responder): Call[] {
  const calls: Call[] = []
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const headers = (init?.headers ?? {}) as Record<string, string>
    const call: Call = {
      method: init?.method ?? 'GET',
      url: String(input),
      auth: headers['Authorization'] ?? null,
      body: typeof init?.body === 'string' ? JSON.parse(init.body) : undefined,
    }
    calls.push(call)
    const r = await respond(call)
    return new Response(r.body === undefined ? null : JSON.stringify(r.body), {
      status: r.status,
      headers: { 'Content-Type': 'application/json' },
    })
  })
  vi.stubGlobal('fetch', fn)
  return calls
}

export function apiError(code: string, message: string, details: unknown = null) {
  return { error: { code, message, details } }
}

export const USER = {
  id: 'u1',
  merchant_id: 'm1',
  username: 'owner',
  phone: null,
  display_name: 'Owner',
  role: 'merchant_owner',
  created_at: 0,
  updated_at: 0,
}

export function tokens(n: number) {
  return {
    access_token: `access-${n}`,
    token_type: 'Bearer',
    expires_in: 900,
    refresh_token: `refresh-${n}`,
    refresh_expires_in: 86400,
    user: USER,
  }
}
