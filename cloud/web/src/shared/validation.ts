/**
 * Client-side checks that mirror the server's validation (cloud/src/{module}/types.rs), so a form
 * can refuse bad input before sending. Each returns null when valid, or an i18n key.
 * The server stays the authority; its 422 answers are mapped onto fields too.
 */
import { percentToBasisPoints, yuanToFen } from './money'

export type Check = (value: string) => string | null

function checkPhone(v: string): string | null {
  const p = v.replace(/[ -]/g, '')
  return /^\+?\d{6,20}$/.test(p) ? null : 'validation.phone'
}

export const checks = {
  required: (v: string) => (v.trim() ? null : 'validation.required'),
  /** Merchant, venue and user display names: 1-100 characters. */
  name: (v: string) => {
    const n = [...v.trim()].length
    return n >= 1 && n <= 100 ? null : 'validation.name'
  },
  optionalName100: (v: string) => ([...v.trim()].length <= 100 ? null : 'validation.tooLong'),
  address: (v: string) => ([...v.trim()].length <= 300 ? null : 'validation.tooLong'),
  /** 3-64 of a-z 0-9 . _ -, starting with a letter (so it never looks like a phone). */
  username: (v: string) => (/^[a-z][a-z0-9._-]{2,63}$/.test(v.trim().toLowerCase()) ? null : 'validation.username'),
  /** 6-20 digits, optional leading +; spaces and dashes ignored. */
  phone: checkPhone,
  optionalPhone: (v: string) => (v.trim() === '' ? null : checkPhone(v)),
  password: (v: string) => ([...v].length >= 8 && new TextEncoder().encode(v).length <= 256 ? null : 'validation.password'),
  deviceCode: (v: string) => (/^[A-Za-z0-9_-]{1,64}$/.test(v.trim()) ? null : 'validation.deviceCode'),
  busAddress: (v: string) => {
    const n = Number(v)
    return Number.isInteger(n) && n >= 1 && n <= 247 ? null : 'validation.busAddress'
  },
  planName: (v: string) => {
    const n = [...v.trim()].length
    return n >= 1 && n <= 50 ? null : 'validation.planName'
  },
  durationMinutes: (v: string) => {
    const n = Number(v)
    return Number.isInteger(n) && n >= 1 && n <= 10_080 ? null : 'validation.duration'
  },
  /** A positive price in yuan with at most two decimals, at most 1,000,000 yuan. */
  priceYuan: (v: string) => {
    const fen = yuanToFen(v)
    return fen !== null && fen >= 1 && fen <= 100_000_000 ? null : 'validation.price'
  },
  commissionPercent: (v: string) => (percentToBasisPoints(v) === null ? 'validation.commission' : null),
  ttlMinutes: (v: string) => {
    const n = Number(v)
    return Number.isInteger(n) && n >= 1 && n <= 10_080 ? null : 'validation.duration'
  },
} satisfies Record<string, Check>

/** Runs the checks of each field; returns field -> i18n key for every failing field. */
export function validate<F extends string>(
  values: Partial<Record<F, string>>,
  rules: Partial<Record<F, Check[]>>,
): Partial<Record<F, string>> {
  const errors: Partial<Record<F, string>> = {}
  for (const field of Object.keys(rules) as F[]) {
    for (const check of rules[field] ?? []) {
      const err = check(values[field] ?? '')
      if (err) {
        errors[field] = err
        break
      }
    }
  }
  return errors
}
