/**
 * A Server-Sent Events parser for streams read with fetch (the console's live feed needs
 * an `Authorization` header, which EventSource cannot send). It follows the HTML
 * "event stream interpretation" rules: lines end in LF, CR or CRLF (also split across
 * chunks); `data` lines join with LF; `id` sets the last event id (kept for reconnects,
 * ignored when it contains NUL); `retry` sets the reconnection delay; lines starting with
 * ':' are comments (keep-alives); an event is dispatched at a blank line only if it has
 * data; the event type defaults to "message".
 */

export interface SseEvent {
  /** The `event:` field, or "message". */
  event: string
  data: string
  /** The last event id in effect when this event was dispatched ('' if none). */
  id: string
}

export class SseParser {
  /** Last event id seen so far: send it as `Last-Event-ID` when reconnecting. */
  lastEventId = ''
  /** Reconnection delay the server asked for (`retry:`), in ms, if any. */
  retryMs: number | null = null
  private buf = ''
  private data: string[] = []
  private event = ''
  private pendingCr = false
  private readonly decoder = new TextDecoder('utf-8')

  constructor(private readonly onEvent: (e: SseEvent) => void) {}

  /** Feeds raw bytes (or text) as they arrive. */
  push(chunk: Uint8Array | string): void {
    let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true })
    // A CR at the very end of the previous chunk already ended a line; a LF right after
    // it belongs to the same line ending.
    if (this.pendingCr && text.startsWith('\n')) {
      text = text.slice(1)
    }
    this.pendingCr = false
    this.buf += text
    let start = 0
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i]
      if (c !== '\n' && c !== '\r') {
        continue
      }
      this.line(this.buf.slice(start, i))
      if (c === '\r') {
        if (i + 1 < this.buf.length) {
          if (this.buf[i + 1] === '\n') i++
        } else {
          this.pendingCr = true
        }
      }
      start = i + 1
    }
    this.buf = this.buf.slice(start)
  }

  /** The stream ended: an unterminated event is discarded (as the spec says). */
  end(): void {
    this.buf = ''
    this.data = []
    this.event = ''
    this.pendingCr = false
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch()
      return
    }
    if (line.startsWith(':')) {
      return
    }
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) {
      value = value.slice(1)
    }
    switch (field) {
      case 'event':
        this.event = value
        break
      case 'data':
        this.data.push(value)
        break
      case 'id':
        if (!value.includes('\0')) {
          this.lastEventId = value
        }
        break
      case 'retry':
        if (/^\d+$/.test(value)) {
          this.retryMs = Number(value)
        }
        break
      default:
        break
    }
  }

  private dispatch(): void {
    if (this.data.length === 0) {
      this.event = ''
      return
    }
    const e: SseEvent = { event: this.event || 'message', data: this.data.join('\n'), id: this.lastEventId }
    this.data = []
    this.event = ''
    this.onEvent(e)
  }
}
