/**
 * The state every console form shares: per-field messages, one message above the form, a
 * saving flag. `check` runs the client-side rules first (nothing is sent while a field is
 * wrong); `submit` sends and maps the server's error onto a field when it names one.
 */
import { ref } from 'vue'
import { useI18n } from 'vue-i18n'
import { validate, type Check } from '@/shared/validation'
import { toFormFailure } from '@/shared/formErrors'

export function useForm<F extends string>(fields: readonly F[], fieldMap: Record<string, F> = {}) {
  const { t } = useI18n()
  const errors = ref<Record<string, string>>({})
  const formError = ref<string | null>(null)
  const saving = ref(false)

  function reset(): void {
    errors.value = {}
    formError.value = null
  }

  /** Validates; returns true when every rule passes. `extra` adds errors found otherwise. */
  function check(
    values: Partial<Record<F, string>>,
    rules: Partial<Record<F, Check[]>>,
    extra: Record<string, string> = {},
  ): boolean {
    const found: Record<string, string> = {}
    for (const [field, key] of Object.entries(validate(values, rules))) {
      if (typeof key === 'string') {
        found[field] = t(key)
      }
    }
    for (const [field, key] of Object.entries(extra)) {
      found[field] ??= t(key)
    }
    errors.value = found
    formError.value = null
    return Object.keys(found).length === 0
  }

  /** Runs the request; on failure fills the messages and resolves false. */
  async function submit(send: () => Promise<unknown>): Promise<boolean> {
    saving.value = true
    try {
      await send()
      reset()
      return true
    } catch (e) {
      const f = toFormFailure(e, fields, fieldMap)
      errors.value = f.fields
      formError.value = f.form
      return false
    } finally {
      saving.value = false
    }
  }

  return { errors, formError, saving, reset, check, submit }
}
