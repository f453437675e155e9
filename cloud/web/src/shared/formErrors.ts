/**
 * Turns a failed request into what a form shows: a message under the blamed field when the
 * server named one this form has (`details.field`), otherwise one message above the form.
 */
import { ApiError } from './http'

export interface FormFailure {
  /** form field -> message */
  fields: Record<string, string>
  /** Shown above the form when no field fits (or for non-API failures). */
  form: string | null
}

/** The server's validation messages read "field: what is wrong"; under the field, only the second part. */
function stripFieldPrefix(message: string, field: string): string {
  const prefix = `${field}: `
  return message.startsWith(prefix) ? message.slice(prefix.length) : message
}

/**
 * @param fieldMap server field name -> form field name, for forms whose fields are named
 *   differently (e.g. `commission_bp` shown as a percent field `commission`). Names not in
 *   the map are used as they are when the form has them.
 */
export function toFormFailure(
  err: unknown,
  formFields: readonly string[],
  fieldMap: Record<string, string> = {},
): FormFailure {
  if (err instanceof ApiError) {
    const f = err.field
    if (f) {
      // `price_plans[2].price_fen` falls back to the list field `price_plans` (the message
      // keeps the full path so the person knows which row).
      const base = f.split(/[.[]/)[0] ?? f
      for (const [name, strip] of [
        [f, true],
        [base, false],
      ] as const) {
        const target = fieldMap[name] ?? name
        if (formFields.includes(target)) {
          return { fields: { [target]: strip ? stripFieldPrefix(err.message, f) : err.message }, form: null }
        }
      }
    }
    return { fields: {}, form: err.message }
  }
  return { fields: {}, form: err instanceof Error ? err.message : String(err) }
}

/** The text to show for any failure outside a form (a list that failed to load, …). */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError || err instanceof Error) {
    return err.message
  }
  return String(err)
}
