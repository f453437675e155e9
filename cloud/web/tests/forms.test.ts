import { describe, expect, it } from 'vitest'
import { checks, validate } from '@/shared/validation'
import { toFormFailure } from '@/shared/formErrors'
import { ApiError } from '@/shared/http'
import { toPlanInputs, toPlanRows, validatePlanRows } from '@/console/pricePlans'

describe('client-side validation', () => {
  it('mirrors the server rules', () => {
    expect(checks.username('alice.w')).toBeNull()
    expect(checks.username('13800138000')).toBe('validation.username')
    expect(checks.username('ab')).toBe('validation.username')
    expect(checks.phone('+86 138-0013-8000')).toBeNull()
    expect(checks.phone('12ab56')).toBe('validation.phone')
    expect(checks.optionalPhone('')).toBeNull()
    expect(checks.password('1234567')).toBe('validation.password')
    expect(checks.password('12345678')).toBeNull()
    expect(checks.busAddress('247')).toBeNull()
    expect(checks.busAddress('0')).toBe('validation.busAddress')
    expect(checks.busAddress('1.5')).toBe('validation.busAddress')
    expect(checks.deviceCode('LOCK-01_a')).toBeNull()
    expect(checks.deviceCode('lock 1')).toBe('validation.deviceCode')
    expect(checks.priceYuan('0')).toBe('validation.price')
    expect(checks.priceYuan('0.01')).toBeNull()
    expect(checks.priceYuan('1000000.01')).toBe('validation.price')
    expect(checks.commissionPercent('5.5')).toBeNull()
    expect(checks.commissionPercent('101')).toBe('validation.commission')
  })

  it('reports the first failing rule of each field', () => {
    const errs = validate(
      { name: '', phone: 'x', address: 'fine' },
      { name: [checks.required, checks.name], phone: [checks.optionalPhone], address: [checks.address] },
    )
    expect(errs).toEqual({ name: 'validation.required', phone: 'validation.phone' })
  })
})

describe('API errors in forms', () => {
  const v = (field: string, msg: string) => new ApiError(422, 'validation_failed', `${field}: ${msg}`, { field })

  it('puts a named field error under that field', () => {
    expect(toFormFailure(v('name', '1-100 characters'), ['name', 'address'])).toEqual({
      fields: { name: '1-100 characters' },
      form: null,
    })
  })

  it('renames server fields the form shows differently', () => {
    const f = toFormFailure(v('commission_bp', 'basis points in 0..=10000'), ['commission'], { commission_bp: 'commission' })
    expect(f.fields).toEqual({ commission: 'basis points in 0..=10000' })
  })

  it('sends list-item errors to the list field with the full path', () => {
    const f = toFormFailure(v('price_plans[1].price_fen', 'must be > 0 fen'), ['name', 'price_plans'])
    expect(f.fields).toEqual({ price_plans: 'price_plans[1].price_fen: must be > 0 fen' })
  })

  it('shows other errors above the form', () => {
    expect(toFormFailure(new ApiError(409, 'conflict', 'an object with the same unique value already exists'), ['name'])).toEqual({
      fields: {},
      form: 'an object with the same unique value already exists',
    })
    expect(toFormFailure(v('merchant_id', 'required'), ['name']).form).toBe('merchant_id: required')
    expect(toFormFailure(new Error('boom'), []).form).toBe('boom')
  })
})

describe('price plan editor model', () => {
  it('shows fen as yuan and sends yuan as fen', () => {
    const rows = toPlanRows([{ id: 'p1', name: '1 小时', duration_minutes: 60, price_fen: 1250 }])
    expect(rows).toEqual([{ name: '1 小时', duration: '60', priceYuan: '12.50' }])
    rows[0]!.priceYuan = '0.29'
    expect(validatePlanRows(rows)).toEqual([])
    expect(toPlanInputs(rows)).toEqual([{ name: '1 小时', duration_minutes: 60, price_fen: 29 }])
  })

  it('flags each bad cell', () => {
    const errs = validatePlanRows([
      { name: 'ok', duration: '30', priceYuan: '5' },
      { name: '', duration: '0', priceYuan: '1.234' },
    ])
    expect(errs).toEqual([
      {},
      { name: 'validation.planName', duration: 'validation.duration', priceYuan: 'validation.price' },
    ])
  })
})
