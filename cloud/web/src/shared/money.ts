/**
 * Money helpers. The API stores and sends every amount as an integer number of fen
 * (1 yuan = 100 fen); the UI shows and accepts yuan. Conversions go through strings and
 * integers only, never through floating-point multiplication, so 0.29 yuan is 29 fen and
 * not 28.999… fen.
 */

/** 1234 -> "12.34"; -5 -> "-0.05". */
export function fenToYuanString(fen: number): string {
  if (!Number.isSafeInteger(fen)) {
    throw new RangeError(`fen must be a safe integer, got ${fen}`)
  }
  const sign = fen < 0 ? '-' : ''
  const abs = Math.abs(fen)
  const yuan = Math.trunc(abs / 100)
  const cents = abs % 100
  return `${sign}${yuan}.${cents.toString().padStart(2, '0')}`
}

/** 1234 -> "¥12.34"; groups thousands: 12345678 -> "¥123,456.78". */
export function formatFen(fen: number | null | undefined): string {
  if (fen === null || fen === undefined || !Number.isSafeInteger(fen)) {
    return '—'
  }
  const [int = '0', frac = '00'] = fenToYuanString(Math.abs(fen)).split('.')
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',')
  return `${fen < 0 ? '-' : ''}¥${grouped}.${frac}`
}

/**
 * Parses what a person typed as yuan ("12", "12.3", "12.34", " 0.5 ") into fen.
 * Returns null for anything that is not a non-negative amount with at most two decimals.
 */
export function yuanToFen(input: string | number): number | null {
  const s = typeof input === 'number' ? String(input) : input.trim()
  const m = /^(\d{1,12})(?:\.(\d{0,2}))?$/.exec(s)
  if (!m) {
    return null
  }
  const yuan = Number(m[1])
  const cents = Number((m[2] ?? '').padEnd(2, '0'))
  const fen = yuan * 100 + cents
  return Number.isSafeInteger(fen) ? fen : null
}

/** Basis points (1/100 of a percent) as a percent string: 550 -> "5.5%". */
export function formatBasisPoints(bp: number): string {
  const pct = bp / 100
  return `${Number.isInteger(pct) ? pct.toString() : pct.toFixed(2).replace(/0+$/, '')}%`
}

/** A percent typed by a person ("5.5") as basis points (550); null if not 0..100 with ≤2 decimals. */
export function percentToBasisPoints(input: string | number): number | null {
  const s = typeof input === 'number' ? String(input) : input.trim()
  const m = /^(\d{1,3})(?:\.(\d{0,2}))?$/.exec(s)
  if (!m) {
    return null
  }
  const bp = Number(m[1]) * 100 + Number((m[2] ?? '').padEnd(2, '0'))
  return bp <= 10_000 ? bp : null
}
