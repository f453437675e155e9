/**
 * Times. The API sends milliseconds since the Unix epoch; every venue is in mainland China,
 * so the UI shows Asia/Shanghai wall-clock time whatever the viewer's own time zone is.
 */
export const TIME_ZONE = 'Asia/Shanghai'

const fmt = new Intl.DateTimeFormat('en-CA', {
  timeZone: TIME_ZONE,
  year: 'numeric',
  month: '2-digit',
  day: '2-digit',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  hourCycle: 'h23',
})

function parts(ms: number): Record<string, string> {
  const out: Record<string, string> = {}
  for (const p of fmt.formatToParts(new Date(ms))) {
    out[p.type] = p.value
  }
  return out
}

/** 1764156849000 -> "2025-11-26 19:34:09" (Asia/Shanghai). */
export function formatTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) {
    return '—'
  }
  const p = parts(ms)
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`
}

/** The calendar date in Asia/Shanghai: "2025-11-26". */
export function formatDate(ms: number): string {
  const p = parts(ms)
  return `${p.year}-${p.month}-${p.day}`
}

/** Whole minutes between `ms` and `now`, never negative (clocks may disagree a little). */
export function minutesAgo(ms: number, now: number = Date.now()): number {
  return Math.max(0, Math.floor((now - ms) / 60_000))
}

/**
 * Midnight of a calendar day in Asia/Shanghai ("2025-11-26") as Unix ms. China has kept
 * UTC+8 without daylight saving since 1991, so this is fixed arithmetic.
 */
export function shanghaiDayStart(day: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day)
  if (!m) {
    return null
  }
  return Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) - 8 * 3_600_000
}
