import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError, buildQuery, HttpClient } from '@/shared/http'
import { mockFetch } from './helpers'

afterEach(() => vi.unstubAllGlobals())

describe('http client', () => {
  it('builds queries without empty values', () => {
    expect(buildQuery({ page: 2, q: '', venue_id: undefined, status: 'online', x: null })).toBe('?page=2&status=online')
    expect(buildQuery({})).toBe('')
  })

  it('turns the error body into an ApiError with details', async () => {
    mockFetch(() => ({
      status: 422,
      body: { error: { code: 'validation_failed', message: 'name: 1-100 characters', details: { field: 'name' } } },
    }))
    const err = await new HttpClient().post('/api/v1/venues', { name: '' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect(err).toMatchObject({ status: 422, code: 'validation_failed', message: 'name: 1-100 characters', field: 'name' })
  })

  it('copes with bodies that are not the API format', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response('<html>bad gateway</html>', { status: 502, statusText: 'Bad Gateway' })))
    await expect(new HttpClient().get('/x')).rejects.toMatchObject({ status: 502, code: 'http_502' })
    vi.stubGlobal('fetch', vi.fn(async () => Promise.reject(new TypeError('Failed to fetch'))))
    await expect(new HttpClient().get('/x')).rejects.toMatchObject({ status: 0, code: 'network' })
  })

  it('returns nothing for 204', async () => {
    mockFetch(() => ({ status: 204 }))
    await expect(new HttpClient().delete('/api/v1/venues/v1')).resolves.toBeUndefined()
  })
})
