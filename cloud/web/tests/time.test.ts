import { describe, expect, it } from 'vitest'
import { formatDate, formatTime, minutesAgo } from '@/shared/time'

describe('time', () => {
  it('shows Asia/Shanghai wall-clock time whatever the local zone', () => {
    // 2025-01-01T00:00:00Z is 08:00 in Shanghai.
    expect(formatTime(Date.UTC(2025, 0, 1, 0, 0, 0))).toBe('2025-01-01 08:00:00')
    // 16:30Z on Dec 31 is already the next day in Shanghai.
    expect(formatTime(Date.UTC(2024, 11, 31, 16, 30, 5))).toBe('2025-01-01 00:30:05')
    expect(formatDate(Date.UTC(2024, 11, 31, 16, 30, 5))).toBe('2025-01-01')
    expect(formatTime(null)).toBe('—')
  })

  it('counts minutes ago, never negative', () => {
    expect(minutesAgo(0, 5 * 60_000 + 59_000)).toBe(5)
    expect(minutesAgo(10_000, 0)).toBe(0)
  })
})
