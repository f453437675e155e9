/**
 * A small JSON client for the dmr-cloud API. Every failure becomes an {@link ApiError}
 * carrying the server's stable `{"error":{"code","message","details"}}` body, so pages can
 * show the message and map `details.field` onto form fields.
 *
 * Authenticated requests that come back 401 trigger exactly one refresh (through
 * {@link AuthHooks.refresh}) and one retry; if that fails too, {@link AuthHooks.onAuthLost}
 * runs (the console sends the person to the login page).
 */

export interface ApiErrorBody {
  error: { code: string; message: string; details: unknown }
}

export type ErrorDetails = Record<string, unknown>

export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly details: ErrorDetails | null

  constructor(status: number, code: string, message: string, details: ErrorDetails | null = null) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.details = details
  }

  /** The request field the server blamed (`details.field`), if any. */
  get field(): string | undefined {
    const f = this.details?.['field']
    return typeof f === 'string' ? f : undefined
  }
}

function isErrorBody(v: unknown): v is ApiErrorBody {
  if (typeof v !== 'object' || v === null || !('error' in v)) {
    return false
  }
  const e = (v as { error: unknown }).error
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof (e as { code?: unknown }).code === 'string' &&
    typeof (e as { message?: unknown }).message === 'string'
  )
}

/** One page of a list endpoint (`cloud/src/http/list.rs`). */
export interface Page<T> {
  items: T[]
  page: number
  per_page: number
  /** Exact when `total_exact`; otherwise a lower bound: the server stops counting past
   * 10,000 rows (or the page after the requested one), so big lists stay cheap to page. */
  total: number
  /** False when more rows match than `total` says (absent from older servers: exact). */
  total_exact?: boolean
}

/** Paging and sorting every list endpoint accepts. */
export interface ListParams {
  page?: number
  per_page?: number
  /** A whitelisted key, optionally prefixed with `-` for descending. */
  sort?: string
  q?: string
}

export type QueryValue = string | number | boolean | null | undefined
export type Query = Record<string, QueryValue>

export interface RequestOptions {
  query?: Query | object
  body?: unknown
  /** Send the access token and refresh on 401 (default true). */
  auth?: boolean
  signal?: AbortSignal
  /** Extra request headers (Idempotency-Key, X-Device-Session, Accept, …). */
  headers?: Record<string, string>
  /** A file sent as the body as it is (firmware images), instead of JSON `body`. */
  file?: Blob
}

export interface AuthHooks {
  accessToken(): string | null
  /** Rotates the tokens; resolves true when a new access token is available. */
  refresh(): Promise<boolean>
  /** The session is gone (refresh failed or the retried request was refused again). */
  onAuthLost(): void
}

export interface HttpClientOptions {
  baseUrl?: string
  fetch?: typeof fetch
  hooks?: AuthHooks
}

export function buildQuery(query: Query | object | undefined): string {
  if (!query) {
    return ''
  }
  const sp = new URLSearchParams()
  for (const [k, v] of Object.entries(query as Query)) {
    if (v !== undefined && v !== null && v !== '') {
      sp.append(k, String(v))
    }
  }
  const s = sp.toString()
  return s ? `?${s}` : ''
}

export class HttpClient {
  private readonly baseUrl: string
  private readonly fetchImpl: typeof fetch
  hooks: AuthHooks | undefined

  constructor(opts: HttpClientOptions = {}) {
    this.baseUrl = opts.baseUrl ?? ''
    // Bound lazily so tests can replace globalThis.fetch after the client is made.
    this.fetchImpl = opts.fetch ?? ((input, init) => globalThis.fetch(input, init))
    this.hooks = opts.hooks
  }

  private async send(method: string, path: string, opts: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers }
    if (opts.file !== undefined) {
      headers['Content-Type'] = 'application/octet-stream'
    } else if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json'
    }
    const useAuth = opts.auth !== false && this.hooks !== undefined
    const token = useAuth ? this.hooks?.accessToken() : null
    if (token) {
      headers['Authorization'] = `Bearer ${token}`
    }
    try {
      return await this.fetchImpl(this.baseUrl + path + buildQuery(opts.query), {
        method,
        headers,
        body: opts.file ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
        signal: opts.signal,
      })
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') {
        throw e
      }
      throw new ApiError(0, 'network', e instanceof Error ? e.message : 'network error')
    }
  }

  /** Sends with the auth hooks' one refresh-and-retry on 401; the raw response. */
  async raw(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    let res = await this.send(method, path, opts)
    if (res.status === 401 && opts.auth !== false && this.hooks) {
      const refreshed = await this.hooks.refresh().catch(() => false)
      if (refreshed) {
        res = await this.send(method, path, opts)
      }
      if (!refreshed || res.status === 401) {
        this.hooks.onAuthLost()
      }
    }
    return res
  }

  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    return parse<T>(await this.raw(method, path, opts))
  }

  /**
   * A file (CSV export): the body as a Blob and the file name the server suggests
   * (Content-Disposition), or an ApiError with the server's message.
   */
  async download(path: string, query?: Query | object, accept = 'text/csv'): Promise<{ blob: Blob; filename: string | null }> {
    const res = await this.raw('GET', path, { query, headers: { Accept: accept } })
    if (!res.ok) {
      return parse<never>(res)
    }
    const cd = res.headers.get('Content-Disposition') ?? ''
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd)
    return { blob: await res.blob(), filename: m?.[1] ? decodeURIComponent(m[1]) : null }
  }

  get<T>(path: string, query?: Query | object, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('GET', path, { ...opts, query })
  }
  post<T>(path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('POST', path, { ...opts, body })
  }
  /** POSTs a file as the raw body (application/octet-stream), query parameters alongside. */
  upload<T>(path: string, file: Blob, query?: Query | object, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('POST', path, { ...opts, query, file })
  }
  patch<T>(path: string, body: unknown, opts: RequestOptions = {}): Promise<T> {
    return this.request<T>('PATCH', path, { ...opts, body })
  }
  delete(path: string, opts: RequestOptions = {}): Promise<void> {
    return this.request<void>('DELETE', path, opts)
  }
}

async function parse<T>(res: Response): Promise<T> {
  const text = await res.text()
  let body: unknown = undefined
  if (text) {
    try {
      body = JSON.parse(text)
    } catch {
      body = undefined
    }
  }
  if (res.ok) {
    return body as T
  }
  if (isErrorBody(body)) {
    const d = body.error.details
    const details = typeof d === 'object' && d !== null && !Array.isArray(d) ? (d as ErrorDetails) : null
    throw new ApiError(res.status, body.error.code, body.error.message, details)
  }
  throw new ApiError(res.status, `http_${res.status}`, res.statusText || `HTTP ${res.status}`)
}

/** Encodes one path segment (ids and codes come from the server but are still untrusted text). */
export function seg(s: string): string {
  return encodeURIComponent(s)
}
