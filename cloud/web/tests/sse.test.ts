import { afterEach, describe, expect, it, vi } from 'vitest'
import { SseParser, type SseEvent } from '@/shared/sse'
import { LiveStream, type LiveState } from '@/console/live'
import { toLiveChange, type LiveChange } from '@/console/api/link'

function parse(chunks: (string | Uint8Array)[]): { events: SseEvent[]; parser: SseParser } {
  const events: SseEvent[] = []
  const parser = new SseParser((e) => events.push(e))
  chunks.forEach((c) => parser.push(c))
  return { events, parser }
}

describe('SSE parser', () => {
  it('dispatches events with type, data and id', () => {
    const { events, parser } = parse(['id: 7\nevent: lock\ndata: {"lock_id":"a"}\n\n'])
    expect(events).toEqual([{ event: 'lock', data: '{"lock_id":"a"}', id: '7' }])
    expect(parser.lastEventId).toBe('7')
  })

  it('joins data lines, defaults the type to message and ignores comments', () => {
    const { events } = parse([': keep-alive\n\ndata: one\ndata: two\n\n'])
    expect(events).toEqual([{ event: 'message', data: 'one\ntwo', id: '' }])
  })

  it('handles CRLF, lone CR and line endings split across chunks', () => {
    const { events } = parse(['event: a\r', '\ndata: x\r\n\r', '\n', 'data: y\r\rdata: z\n', '\n'])
    expect(events.map((e) => [e.event, e.data])).toEqual([
      ['a', 'x'],
      ['message', 'y'],
      ['message', 'z'],
    ])
  })

  it('decodes UTF-8 split inside a character', () => {
    const bytes = new TextEncoder().encode('data: 开锁\n\n')
    const { events } = parse([bytes.slice(0, 8), bytes.slice(8)])
    expect(events[0]?.data).toBe('开锁')
  })

  it('keeps the id across events, ignores ids with NUL, reads retry, drops empty and unterminated events', () => {
    const { events, parser } = parse(['id: 1\ndata: a\n\nevent: lock\n\nid: bad\0id\ndata: b\n\nretry: 2500\nretry: x\ndata: never'])
    expect(events).toEqual([
      { event: 'message', data: 'a', id: '1' },
      { event: 'message', data: 'b', id: '1' },
    ])
    expect(parser.retryMs).toBe(2500)
    parser.end()
    parser.push('\n')
    expect(events).toHaveLength(2)
  })

  it('takes a field without a colon as empty and only strips one leading space', () => {
    const { events } = parse(['data\ndata:  two spaces\n\n'])
    expect(events[0]?.data).toBe('\n two spaces')
  })
})

describe('live change payloads', () => {
  it('maps lock, gateway and alarm events and refuses junk', () => {
    expect(toLiveChange('lock', '{"lock_id":"l1","door_closed":false}')).toEqual({
      kind: 'lock',
      data: { lock_id: 'l1', door_closed: false },
    })
    expect(toLiveChange('gateway', '{"gateway_id":"g1","online":true}')?.kind).toBe('gateway')
    expect(toLiveChange('change', '{"kind":"alarm","data":{"alarm_id":"x"}}')).toEqual({ kind: 'alarm', data: { alarm_id: 'x' } })
    // What link/live.rs sends: the change wrapped with its kind, entity and time.
    const wrapped = '{"kind":"lock","entity_id":"l2","merchant_id":"m","at":5,"data":{"lock_id":"l2","locked":true}}'
    expect(toLiveChange('lock', wrapped)).toEqual({ kind: 'lock', data: { lock_id: 'l2', locked: true } })
    expect(toLiveChange('lock', 'not json')).toBeNull()
    expect(toLiveChange('lock', '{"id":"no lock_id"}')).toBeNull()
    expect(toLiveChange('weather', '{}')).toBeNull()
  })
})

/** A fetch whose responses are scripted streams; records the headers of each call. */
function scriptedFetch(responses: (() => Response)[]) {
  const calls: Record<string, string>[] = []
  const fn = vi.fn(async (_url: RequestInfo | URL, init?: RequestInit) => {
    calls.push({ ...(init?.headers as Record<string, string>) })
    const next = responses.shift()
    if (!next) return new Promise<Response>(() => undefined) // hang: no more scripted answers
    return next()
  })
  return { fn: fn as unknown as typeof fetch, calls }
}

function streamOf(text: string): Response {
  return new Response(
    new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode(text))
        c.close()
      },
    }),
    { status: 200, headers: { 'Content-Type': 'text/event-stream' } },
  )
}

describe('LiveStream', () => {
  afterEach(() => vi.useRealTimers())

  it('sends the bearer token, delivers changes and resumes with Last-Event-ID after the stream ends', async () => {
    vi.useFakeTimers()
    const { fn, calls } = scriptedFetch([
      () => streamOf('id: 5\nevent: lock\ndata: {"kind":"lock","entity_id":"l1","data":{"lock_id":"l1","status":"online"}}\n\n'),
      () => streamOf('id: 6\nevent: gateway\ndata: {"gateway_id":"g1","online":false}\n\n'),
    ])
    const seen: LiveChange[] = []
    const states: LiveState[] = []
    const s = new LiveStream({
      url: '/api/v1/live',
      fetch: fn,
      accessToken: () => 'tok',
      refresh: async () => true,
      onChange: (c) => seen.push(c),
      onState: (st) => states.push(st),
      minDelayMs: 100,
    })
    s.start()
    await vi.advanceTimersByTimeAsync(0)
    expect(calls[0]).toMatchObject({ Authorization: 'Bearer tok', Accept: 'text/event-stream' })
    expect(calls[0]?.['Last-Event-ID']).toBeUndefined()
    expect(seen).toEqual([{ kind: 'lock', data: { lock_id: 'l1', status: 'online' } }])
    expect(states).toContain('retrying')
    await vi.advanceTimersByTimeAsync(100)
    expect(calls[1]?.['Last-Event-ID']).toBe('5')
    expect(seen[1]?.kind).toBe('gateway')
    expect(s.lastEventId).toBe('6')
    s.stop()
    expect(s.state).toBe('idle')
  })

  it('backs off exponentially on failures, capped', async () => {
    vi.useFakeTimers()
    const fail = () => new Response('oops', { status: 503 })
    const { fn, calls } = scriptedFetch([fail, fail, fail, fail])
    const s = new LiveStream({
      url: '/x',
      fetch: fn,
      accessToken: () => null,
      refresh: async () => false,
      onChange: () => undefined,
      minDelayMs: 100,
      maxDelayMs: 300,
    })
    s.start()
    await vi.advanceTimersByTimeAsync(0)
    expect(calls).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(99)
    expect(calls).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(1) // 100 ms after the first failure
    expect(calls).toHaveLength(2)
    await vi.advanceTimersByTimeAsync(200) // then 200 ms
    expect(calls).toHaveLength(3)
    await vi.advanceTimersByTimeAsync(299) // then capped at 300 ms
    expect(calls).toHaveLength(3)
    await vi.advanceTimersByTimeAsync(1)
    expect(calls).toHaveLength(4)
    s.stop()
  })

  it('refreshes the session once on 401, and stops for good on 404', async () => {
    vi.useFakeTimers()
    let token = 'old'
    const { fn, calls } = scriptedFetch([() => new Response(null, { status: 401 }), () => new Response(null, { status: 404 })])
    const s = new LiveStream({
      url: '/x',
      fetch: fn,
      accessToken: () => token,
      refresh: async () => {
        token = 'new'
        return true
      },
      onChange: () => undefined,
    })
    s.start()
    await vi.advanceTimersByTimeAsync(0)
    expect(calls.map((c) => c['Authorization'])).toEqual(['Bearer old', 'Bearer new'])
    expect(s.state).toBe('unavailable')
    await vi.advanceTimersByTimeAsync(60_000)
    expect(calls).toHaveLength(2)
  })
})
