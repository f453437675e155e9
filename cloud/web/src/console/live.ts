/**
 * The console's live connection to GET /api/v1/live (Server-Sent Events of lock, gateway,
 * alarm and order changes of the caller's tenant). EventSource cannot send the
 * `Authorization: Bearer` header the API needs, so the stream is read with fetch and a
 * ReadableStream and parsed by {@link SseParser}.
 *
 * Reconnects after any end or failure with a growing delay (1 s doubling to 30 s, or the
 * server's `retry:`), sending `Last-Event-ID` so the server resumes after the last change
 * seen. A 401 refreshes the session once before the next attempt; 404 means this server
 * has no live feed (an older dmr-cloud) and stops trying; 403 stops too (the role may not
 * read devices).
 */
import { SseParser } from '@/shared/sse'
import { toLiveChange, type LiveChange } from './api/link'

export type LiveState = 'idle' | 'connecting' | 'open' | 'retrying' | 'unavailable' | 'forbidden'

export interface LiveOptions {
  url: string
  onChange: (c: LiveChange) => void
  onState?: (s: LiveState) => void
  accessToken: () => string | null
  /** Rotates the session; true when a new access token is available. */
  refresh: () => Promise<boolean>
  fetch?: typeof fetch
  /** Delays between attempts (tests shorten them). */
  minDelayMs?: number
  maxDelayMs?: number
}

export class LiveStream {
  state: LiveState = 'idle'
  /** The id of the last change received (what a reconnect resumes from). */
  lastEventId = ''
  private abort: AbortController | null = null
  private timer: ReturnType<typeof setTimeout> | null = null
  private failures = 0
  private serverRetry: number | null = null
  private running = false

  constructor(private readonly o: LiveOptions) {}

  start(): void {
    if (this.running) {
      return
    }
    this.running = true
    this.failures = 0
    void this.connect()
  }

  stop(): void {
    this.running = false
    this.abort?.abort()
    this.abort = null
    if (this.timer) {
      clearTimeout(this.timer)
      this.timer = null
    }
    this.set('idle')
  }

  /** The delay before the next attempt after `failures` failures in a row. */
  nextDelay(): number {
    const min = this.o.minDelayMs ?? 1000
    const max = this.o.maxDelayMs ?? 30_000
    if (this.serverRetry !== null && this.failures <= 1) {
      return this.serverRetry
    }
    return Math.min(max, min * 2 ** Math.max(0, this.failures - 1))
  }

  private set(s: LiveState): void {
    if (this.state !== s) {
      this.state = s
      this.o.onState?.(s)
    }
  }

  private schedule(): void {
    if (!this.running) {
      return
    }
    this.failures++
    this.set('retrying')
    this.timer = setTimeout(() => {
      this.timer = null
      void this.connect()
    }, this.nextDelay())
  }

  private async connect(): Promise<void> {
    if (!this.running) {
      return
    }
    this.set('connecting')
    const abort = new AbortController()
    this.abort = abort
    const headers: Record<string, string> = { Accept: 'text/event-stream' }
    const token = this.o.accessToken()
    if (token) {
      headers['Authorization'] = `Bearer ${token}`
    }
    if (this.lastEventId) {
      headers['Last-Event-ID'] = this.lastEventId
    }
    const doFetch = this.o.fetch ?? ((i, init) => globalThis.fetch(i, init))
    let res: Response
    try {
      res = await doFetch(this.o.url, { headers, signal: abort.signal, cache: 'no-store' })
    } catch {
      this.schedule()
      return
    }
    if (res.status === 401) {
      const ok = await this.o.refresh().catch(() => false)
      if (!ok) {
        this.running = false
        this.set('forbidden')
        return
      }
      // Retry at once with the new token (not counted as a failure).
      void this.connect()
      return
    }
    if (res.status === 404 || res.status === 405 || res.status === 501) {
      this.running = false
      this.set('unavailable')
      return
    }
    if (res.status === 403) {
      this.running = false
      this.set('forbidden')
      return
    }
    if (!res.ok || !res.body) {
      this.schedule()
      return
    }
    this.set('open')
    this.failures = 0
    const parser = new SseParser((e) => {
      this.lastEventId = parser.lastEventId
      const change = toLiveChange(e.event, e.data)
      if (change) {
        this.o.onChange(change)
      }
    })
    parser.lastEventId = this.lastEventId
    const reader = res.body.getReader()
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) {
          break
        }
        parser.push(value)
        this.lastEventId = parser.lastEventId
      }
    } catch {
      // Network drop or stop(): fall through to reconnect (or not, if stopped).
    }
    parser.end()
    this.serverRetry = parser.retryMs
    if (this.running && this.abort === abort) {
      this.schedule()
    }
  }
}
