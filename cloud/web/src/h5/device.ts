/**
 * The phone's anonymous, device-bound session (there is no login on the H5 pages): a random
 * id made once and kept in localStorage, sent as `X-Device-Session` so "my orders" lists the
 * orders placed from this browser. Also the idempotency keys of order creation: one key
 * per attempt, reused when the same attempt is retried (a double tap or a retry after a
 * dropped response makes one order, not two).
 */
const SESSION_KEY = 'dmr.h5.device'

/** 32 hex characters from the platform's CSPRNG (works on plain-http pages too, unlike randomUUID). */
export function randomId(bytes = 16): string {
  const b = new Uint8Array(bytes)
  globalThis.crypto.getRandomValues(b)
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
}

let memorySession: string | null = null

/** This device's session id (created on first use). Storage refused: one per page load. */
export function deviceSession(): string {
  try {
    const s = globalThis.localStorage?.getItem(SESSION_KEY)
    if (s && /^[0-9a-f]{32}$/.test(s)) {
      return s
    }
    const fresh = randomId()
    globalThis.localStorage?.setItem(SESSION_KEY, fresh)
    return globalThis.localStorage?.getItem(SESSION_KEY) === fresh ? fresh : (memorySession ??= fresh)
  } catch {
    return (memorySession ??= randomId())
  }
}

/**
 * Idempotency keys per attempt: `keyFor('lock/plan')` returns the same key until
 * `settle('lock/plan')` is called after the attempt got an answer.
 */
export class Attempts {
  private readonly keys = new Map<string, string>()
  keyFor(what: string): string {
    let k = this.keys.get(what)
    if (!k) {
      k = randomId()
      this.keys.set(what, k)
    }
    return k
  }
  settle(what: string): void {
    this.keys.delete(what)
  }
}
