/**
 * What every resource page of the console (merchants, venues, gateways, locks, users) does
 * the same way, in one place: a server-paged list with filters and a search box applied on
 * Enter, a create/edit dialog whose form is validated before sending and shows the API's
 * errors in place, a confirmed delete, and row actions that report success or the API's
 * message. Pages keep only what is theirs: columns, fields, validation rules and the
 * request bodies.
 *
 * Toasts and the confirm box default to Element Plus; tests pass their own `ui`.
 */
import { reactive, ref, type Ref } from 'vue'
import { useI18n } from 'vue-i18n'
import { ElMessage, ElMessageBox } from 'element-plus'
import 'element-plus/es/components/message/style/css'
import 'element-plus/es/components/message-box/style/css'
import type { Page } from '@/shared/http'
import { errorMessage } from '@/shared/formErrors'
import { usePagedList, type PagedParams } from './usePagedList'
import { useForm } from './useForm'

export interface CrudUi {
  success(message: string): void
  error(message: string): void
  /** Resolves true when the person confirmed. */
  confirm(message: string, title: string, confirmText: string, cancelText: string): Promise<boolean>
}

export const elementUi: CrudUi = {
  success: (m) => void ElMessage.success(m),
  error: (m) => void ElMessage.error(m),
  confirm: async (message, title, confirmButtonText, cancelButtonText) => {
    try {
      await ElMessageBox.confirm(message, title, { type: 'warning', confirmButtonText, cancelButtonText })
      return true
    } catch {
      return false
    }
  },
}

export interface CrudOptions<T, F extends object, Form extends object, Fld extends string> {
  /** One page of rows for the filters (empty filter values are left out of the query). */
  fetch: (params: F & PagedParams) => Promise<Page<T>>
  /** Initial filter values; `q` is fed by the search box when present. */
  filters: F
  /** The form of a new row. */
  emptyForm: () => Form
  /** The form for editing a row. */
  toForm: (row: T) => Form
  /** Form field names (server `details.field` is mapped onto these). */
  fields: readonly Fld[]
  /** Server field name -> form field, for fields shown differently (commission_bp as %). */
  fieldMap?: Record<string, Fld>
  /** Deletes a row (soft delete on the server). */
  remove?: (row: T) => Promise<unknown>
  /** How a row is named in the delete confirmation. */
  nameOf?: (row: T) => string
  perPage?: number
  ui?: CrudUi
}

export function useCrud<T, F extends object, Form extends object, Fld extends string>(
  opts: CrudOptions<T, F, Form, Fld>,
) {
  const { t } = useI18n()
  const ui = opts.ui ?? elementUi
  const filters = ref(opts.filters) as Ref<F>
  // What is typed in the search box; applied to `filters.q` on Enter or the search button.
  const search = ref('')
  const list = usePagedList(opts.fetch, filters, { perPage: opts.perPage })

  const dialogOpen = ref(false)
  const editing = ref<T | null>(null) as Ref<T | null>
  // Forms hold plain strings, so the reactive proxy has the form's own type.
  const form = reactive(opts.emptyForm()) as Form
  const f = useForm(opts.fields, opts.fieldMap)

  function applySearch(): void {
    ;(filters.value as { q?: string }).q = search.value
  }
  function clearSearch(): void {
    ;(filters.value as { q?: string }).q = ''
  }

  /** Opens the dialog on an empty form; `preset` fills some fields (e.g. the filtered venue). */
  function openCreate(preset: Partial<Form> = {}): void {
    editing.value = null
    Object.assign(form, opts.emptyForm(), preset)
    f.reset()
    dialogOpen.value = true
  }

  function openEdit(row: T): void {
    editing.value = row
    Object.assign(form, opts.toForm(row))
    f.reset()
    dialogOpen.value = true
  }

  /**
   * Saves the dialog: `valid` runs the client-side rules (false = nothing is sent), `send`
   * creates (current = null) or updates. On success the dialog closes and the list reloads;
   * on failure the API's message lands under its field or above the form.
   */
  async function save(valid: () => boolean, send: (current: T | null) => Promise<unknown>): Promise<boolean> {
    if (!valid()) {
      return false
    }
    const current = editing.value
    const done = await f.submit(() => send(current))
    if (done) {
      dialogOpen.value = false
      ui.success(t('common.saved'))
      await list.reload()
    }
    return done
  }

  /** A row action (suspend, disable, …): success toast and reload, or the API's message. */
  async function act(run: () => Promise<unknown>): Promise<boolean> {
    try {
      await run()
    } catch (e) {
      ui.error(errorMessage(e))
      return false
    }
    ui.success(t('common.saved'))
    await list.reload()
    return true
  }

  /** Asks, deletes, reloads. */
  async function remove(row: T): Promise<boolean> {
    if (!opts.remove) {
      return false
    }
    const name = opts.nameOf ? opts.nameOf(row) : ''
    const ok = await ui.confirm(t('common.confirmDelete', { name }), t('common.delete'), t('common.delete'), t('common.cancel'))
    if (!ok) {
      return false
    }
    try {
      await opts.remove(row)
    } catch (e) {
      ui.error(errorMessage(e))
      return false
    }
    ui.success(t('common.deleted'))
    await list.reload()
    return true
  }

  return {
    filters,
    search,
    applySearch,
    clearSearch,
    list,
    dialogOpen,
    editing,
    form,
    f,
    openCreate,
    openEdit,
    save,
    act,
    remove,
  }
}

export type Crud<T> = ReturnType<typeof useCrud<T, object, object, string>>
