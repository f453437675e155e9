import { describe, expect, it } from 'vitest'
import { fenToYuanString, formatBasisPoints, formatFen, percentToBasisPoints, yuanToFen } from '@/shared/money'

describe('money', () => {
  it('formats fen as yuan', () => {
    expect(formatFen(1234)).toBe('¥12.34')
    expect(formatFen(0)).toBe('¥0.00')
    expect(formatFen(5)).toBe('¥0.05')
    expect(formatFen(100)).toBe('¥1.00')
    expect(formatFen(12345678)).toBe('¥123,456.78')
    expect(formatFen(-250)).toBe('-¥2.50')
    expect(formatFen(null)).toBe('—')
    expect(formatFen(1.5)).toBe('—')
    expect(fenToYuanString(-5)).toBe('-0.05')
  })

  it('parses yuan into fen without floating-point error', () => {
    expect(yuanToFen('12.34')).toBe(1234)
    expect(yuanToFen('0.29')).toBe(29)
    expect(yuanToFen('1.1')).toBe(110)
    expect(yuanToFen(' 8 ')).toBe(800)
    expect(yuanToFen('8.')).toBe(800)
    expect(yuanToFen(19.99)).toBe(1999)
    expect(yuanToFen('1.234')).toBeNull()
    expect(yuanToFen('-1')).toBeNull()
    expect(yuanToFen('abc')).toBeNull()
    expect(yuanToFen('')).toBeNull()
  })

  it('round-trips every cent amount up to 100 yuan', () => {
    for (let fen = 0; fen <= 10_000; fen++) {
      expect(yuanToFen(fenToYuanString(fen))).toBe(fen)
    }
  })

  it('shows and parses commission basis points as percent', () => {
    expect(formatBasisPoints(550)).toBe('5.5%')
    expect(formatBasisPoints(600)).toBe('6%')
    expect(formatBasisPoints(1)).toBe('0.01%')
    expect(formatBasisPoints(10_000)).toBe('100%')
    expect(percentToBasisPoints('5.5')).toBe(550)
    expect(percentToBasisPoints('0.01')).toBe(1)
    expect(percentToBasisPoints('100')).toBe(10_000)
    expect(percentToBasisPoints('100.01')).toBeNull()
    expect(percentToBasisPoints('5.555')).toBeNull()
  })
})
