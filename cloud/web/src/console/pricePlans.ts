/**
 * The price-plan editor's model. People type prices in yuan; the API stores integer fen.
 * Rows are kept as the text typed so a half-typed "12." is not rewritten under the cursor.
 */
import type { PricePlan, PricePlanInput } from './api/types'
import { fenToYuanString, yuanToFen } from '@/shared/money'
import { checks } from '@/shared/validation'

export const MAX_PLANS = 20

export interface PlanRow {
  name: string
  duration: string
  priceYuan: string
}

export interface PlanRowErrors {
  name?: string
  duration?: string
  priceYuan?: string
}

export function toPlanRows(plans: readonly PricePlan[]): PlanRow[] {
  return plans.map((p) => ({
    name: p.name,
    duration: String(p.duration_minutes),
    priceYuan: fenToYuanString(p.price_fen),
  }))
}

export function emptyPlanRow(): PlanRow {
  return { name: '', duration: '60', priceYuan: '' }
}

/** Per-row i18n keys of what is wrong; an empty array when every row is valid. */
export function validatePlanRows(rows: readonly PlanRow[]): PlanRowErrors[] {
  const errs = rows.map((r) => {
    const e: PlanRowErrors = {}
    const n = checks.planName(r.name)
    const d = checks.durationMinutes(r.duration)
    const p = checks.priceYuan(r.priceYuan)
    if (n) e.name = n
    if (d) e.duration = d
    if (p) e.priceYuan = p
    return e
  })
  return errs.some((e) => Object.keys(e).length > 0) ? errs : []
}

/** The API body; call only after validatePlanRows found nothing. */
export function toPlanInputs(rows: readonly PlanRow[]): PricePlanInput[] {
  return rows.map((r) => {
    const fen = yuanToFen(r.priceYuan)
    if (fen === null) {
      throw new RangeError(`invalid price ${r.priceYuan}`)
    }
    return { name: r.name.trim(), duration_minutes: Number(r.duration), price_fen: fen }
  })
}
