import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { flushPromises } from '@vue/test-utils'
import { useLiveStore } from '@/console/stores/live'
import { SESSION_KEY } from '@/console/stores/auth'
import { USER } from './helpers'

function sse(text: string): Response {
  return new Response(
    new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode(text))
        // Left open, like a live feed.
      },
    }),
    { status: 200, headers: { 'Content-Type': 'text/event-stream' } },
  )
}

beforeEach(() => {
  localStorage.clear()
  localStorage.setItem(SESSION_KEY, JSON.stringify({ accessToken: 'a1', refreshToken: 'r1', user: USER }))
  setActivePinia(createPinia())
})
afterEach(() => vi.unstubAllGlobals())

describe('live store', () => {
  it('connects while used, merges partial lock changes and stops when released', async () => {
    const urls: string[] = []
    const signals: AbortSignal[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url: string, init: RequestInit) => {
        urls.push(url)
        signals.push(init.signal!)
        return sse(
          'id: 1:a\nevent: lock\ndata: {"kind":"lock","data":{"lock_id":"l1","status":"online","door_closed":true,"fw_version":"1.2.0"}}\n\n' +
            'id: 2:b\nevent: lock\ndata: {"kind":"lock","data":{"lock_id":"l1","door_closed":false}}\n\n' +
            'id: 3:c\nevent: gateway\ndata: {"kind":"gateway","data":{"gateway_id":"g1","online":true,"outbox_pending":0}}\n\n',
        )
      }),
    )
    const live = useLiveStore()
    const seen: string[] = []
    const off = live.subscribe((c) => seen.push(c.kind))
    live.acquire()
    live.acquire() // a second page: still one connection
    await flushPromises()
    await new Promise((r) => setTimeout(r, 10))
    expect(urls).toEqual(['/api/v1/live'])
    expect(live.state).toBe('open')
    expect(live.locks.get('l1')).toEqual({ lock_id: 'l1', status: 'online', door_closed: false, fw_version: '1.2.0' })
    expect(live.gateways.get('g1')?.online).toBe(true)
    expect(seen).toEqual(['lock', 'lock', 'gateway'])
    expect(live.changes).toBe(3)
    live.release()
    expect(signals[0]?.aborted).toBe(false)
    live.release()
    expect(signals[0]?.aborted).toBe(true)
    expect(live.state).toBe('idle')
    off()
  })
})
