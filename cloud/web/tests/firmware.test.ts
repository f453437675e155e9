import { afterEach, describe, expect, it, vi } from 'vitest'
import { firmwareApi, validateUpload } from '@/console/api/firmware'
import { reconciliationApi } from '@/console/api/orders'
import { api } from '@/console/api/client'
import { toFormFailure } from '@/shared/formErrors'
import { ApiError } from '@/shared/http'
import { apiError, mockFetch } from './helpers'

afterEach(() => {
  vi.unstubAllGlobals()
  api.hooks = undefined
})

describe('firmware releases', () => {
  it('validates the upload form before sending', () => {
    const file = new Blob([new Uint8Array([1, 2, 3])])
    expect(validateUpload({ file, version: '', notes: '' })).toEqual({})
    expect(validateUpload({ file, version: ' 1.10.300 ', notes: 'ok' })).toEqual({})
    expect(validateUpload({ file: null, version: '', notes: '' })).toEqual({ image: 'firmware.errors.fileRequired' })
    expect(validateUpload({ file: new Blob([]), version: '', notes: '' })).toEqual({ image: 'firmware.errors.fileEmpty' })
    expect(validateUpload({ file, version: '1.3', notes: '' })).toEqual({ version: 'firmware.errors.version' })
    expect(validateUpload({ file, version: 'v1.3.0', notes: '' })).toEqual({ version: 'firmware.errors.version' })
    expect(validateUpload({ file, version: '', notes: 'x'.repeat(2001) })).toEqual({ notes: 'firmware.errors.notes' })
  })

  it('sends the image as the raw body with version and notes in the query', async () => {
    let seen: { url: string; init: RequestInit | undefined } | null = null
    vi.stubGlobal(
      'fetch',
      vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
        seen = { url: String(input), init }
        return new Response(JSON.stringify({ id: 'r1', version: '1.3.0' }), { status: 201 })
      }),
    )
    const file = new Blob([new Uint8Array([0x44, 0x4d, 0x52, 0x46])])
    const r = await firmwareApi.upload({ file, version: '1.3.0', notes: '门磁 fix' })
    expect(r.version).toBe('1.3.0')
    expect(seen).not.toBeNull()
    const s = seen as unknown as { url: string; init: RequestInit }
    expect(s.init.method).toBe('POST')
    expect(s.init.body).toBe(file)
    expect((s.init.headers as Record<string, string>)['Content-Type']).toBe('application/octet-stream')
    const url = new URL(s.url, 'http://x')
    expect(url.pathname).toBe('/api/v1/firmware-releases')
    expect(url.searchParams.get('version')).toBe('1.3.0')
    expect(url.searchParams.get('notes')).toBe('门磁 fix')
  })

  it('shows the server refusal under the field it names, or above the form', async () => {
    mockFetch(() => ({
      status: 422,
      body: apiError('validation_failed', 'image: image signature does not verify with vendor key 4', { field: 'image' }),
    }))
    const err = await firmwareApi.upload({ file: new Blob([new Uint8Array([1])]) }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ApiError)
    const f = toFormFailure(err, ['image', 'version', 'notes'])
    expect(f.fields).toEqual({ image: 'image signature does not verify with vendor key 4' })
    expect(f.form).toBeNull()
    const conflict = toFormFailure(new ApiError(409, 'conflict', 'version 1.3.0 is already published'), ['image'])
    expect(conflict).toEqual({ fields: {}, form: 'version 1.3.0 is already published' })
  })

  it('withdraws with a reason', async () => {
    const calls = mockFetch(() => ({ status: 200, body: { id: 'r1', status: 'withdrawn' } }))
    await firmwareApi.withdraw('r 1', 'door sensor regression')
    expect(calls[0]).toMatchObject({
      method: 'POST',
      url: '/api/v1/firmware-releases/r%201/withdraw',
      body: { reason: 'door sensor regression' },
    })
  })
})

describe('reconciliation items', () => {
  it('pages and filters one report', async () => {
    const calls = mockFetch(() => ({ status: 200, body: { items: [], page: 2, per_page: 20, total: 0 } }))
    await reconciliationApi.items('rep-1', { page: 2, per_page: 20, kind: 'paid_never_opened' })
    await reconciliationApi.items('rep-1', { page: 1, per_page: 20, kind: '' })
    expect(calls[0]?.url).toBe('/api/v1/reconciliation/reports/rep-1/items?page=2&per_page=20&kind=paid_never_opened')
    expect(calls[1]?.url).toBe('/api/v1/reconciliation/reports/rep-1/items?page=1&per_page=20')
  })
})
