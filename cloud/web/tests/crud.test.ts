import { describe, expect, it, vi } from 'vitest'
import { defineComponent, h } from 'vue'
import { flushPromises, mount } from '@vue/test-utils'
import { setupI18n } from '@/shared/i18n'
import { useCrud, type CrudUi } from '@/console/composables/useCrud'
import { checks } from '@/shared/validation'
import { ApiError, type Page } from '@/shared/http'

interface Row {
  id: string
  name: string
}

function withSetup<T>(fn: () => T): T {
  let result!: T
  mount(
    defineComponent({
      setup() {
        result = fn()
        return () => h('div')
      },
    }),
    { global: { plugins: [setupI18n()] } },
  )
  return result
}

function fakeUi(confirmAnswer = true) {
  const log: string[] = []
  const ui: CrudUi = {
    success: (m) => void log.push(`ok:${m}`),
    error: (m) => void log.push(`err:${m}`),
    confirm: async (m) => {
      log.push(`ask:${m}`)
      return confirmAnswer
    },
  }
  return { ui, log }
}

function setup(opts: { confirm?: boolean; remove?: (r: Row) => Promise<unknown> } = {}) {
  const fetches: object[] = []
  let rows: Row[] = [{ id: 'a', name: 'Alpha' }]
  const fetch = vi.fn(async (p: object): Promise<Page<Row>> => {
    fetches.push(p)
    return { items: rows, page: 1, per_page: 20, total: rows.length }
  })
  const { ui, log } = fakeUi(opts.confirm ?? true)
  const crud = withSetup(() =>
    useCrud({
      fetch,
      filters: { q: '', status: '' },
      emptyForm: () => ({ name: '', phone: '' }),
      toForm: (r: Row) => ({ name: r.name, phone: '' }),
      fields: ['name', 'phone'] as const,
      remove: opts.remove ?? (async (r: Row) => void (rows = rows.filter((x) => x.id !== r.id))),
      nameOf: (r) => r.name,
      ui,
    }),
  )
  return { crud, fetches, log, setRows: (r: Row[]) => (rows = r) }
}

describe('useCrud', () => {
  it('loads the first page and applies the search box only on demand', async () => {
    const { crud, fetches } = setup()
    await flushPromises()
    expect(crud.list.items.value).toEqual([{ id: 'a', name: 'Alpha' }])
    crud.search.value = 'alp'
    await flushPromises()
    expect(fetches).toHaveLength(1) // typing alone sends nothing
    crud.applySearch()
    await flushPromises()
    expect(fetches.at(-1)).toEqual({ q: 'alp', status: '', page: 1, per_page: 20 })
    crud.clearSearch()
    await flushPromises()
    expect(fetches.at(-1)).toEqual({ q: '', status: '', page: 1, per_page: 20 })
  })

  it('opens create on an empty (or preset) form and edit on the row, clearing old errors', async () => {
    const { crud } = setup()
    await flushPromises()
    crud.f.errors.value = { name: 'old' }
    crud.openEdit({ id: 'a', name: 'Alpha' })
    expect(crud.dialogOpen.value).toBe(true)
    expect(crud.editing.value?.id).toBe('a')
    expect(crud.form.name).toBe('Alpha')
    expect(crud.f.errors.value).toEqual({})
    crud.openCreate({ phone: '13800000000' })
    expect(crud.editing.value).toBeNull()
    expect({ ...crud.form }).toEqual({ name: '', phone: '13800000000' })
  })

  it('sends nothing while the form is invalid', async () => {
    const { crud, log } = setup()
    crud.openCreate()
    const send = vi.fn(async () => undefined)
    const ok = await crud.save(() => crud.f.check(crud.form, { name: [checks.name] }), send)
    expect(ok).toBe(false)
    expect(send).not.toHaveBeenCalled()
    expect(crud.f.errors.value['name']).toBeTruthy()
    expect(crud.dialogOpen.value).toBe(true)
    expect(log).toEqual([])
  })

  it('creates, closes the dialog, says so and reloads', async () => {
    const { crud, fetches, log, setRows } = setup()
    await flushPromises()
    crud.openCreate()
    crud.form.name = 'Beta'
    const send = vi.fn(async (current: Row | null) => {
      expect(current).toBeNull()
      setRows([
        { id: 'a', name: 'Alpha' },
        { id: 'b', name: 'Beta' },
      ])
    })
    expect(await crud.save(() => true, send)).toBe(true)
    expect(send).toHaveBeenCalledOnce()
    expect(crud.dialogOpen.value).toBe(false)
    expect(log).toEqual(['ok:已保存'])
    expect(fetches).toHaveLength(2)
    expect(crud.list.items.value.map((r) => r.id)).toEqual(['a', 'b'])
  })

  it('passes the edited row to send and keeps the dialog open with the API error under its field', async () => {
    const { crud, fetches, log } = setup()
    await flushPromises()
    crud.openEdit({ id: 'a', name: 'Alpha' })
    const ok = await crud.save(
      () => true,
      async (current) => {
        expect(current?.id).toBe('a')
        throw new ApiError(422, 'validation', 'phone: not a mainland mobile number', { field: 'phone' })
      },
    )
    expect(ok).toBe(false)
    expect(crud.dialogOpen.value).toBe(true)
    expect(crud.f.errors.value).toEqual({ phone: 'not a mainland mobile number' })
    expect(log).toEqual([])
    expect(fetches).toHaveLength(1)
  })

  it('deletes only after confirmation, then reloads', async () => {
    const { crud, log } = setup()
    await flushPromises()
    expect(await crud.remove({ id: 'a', name: 'Alpha' })).toBe(true)
    expect(log[0]).toContain('Alpha')
    expect(log[1]).toBe('ok:已删除')
    expect(crud.list.items.value).toEqual([])
  })

  it('does nothing when the delete is not confirmed', async () => {
    const remove = vi.fn(async () => undefined)
    const { crud, fetches } = setup({ confirm: false, remove })
    await flushPromises()
    expect(await crud.remove({ id: 'a', name: 'Alpha' })).toBe(false)
    expect(remove).not.toHaveBeenCalled()
    expect(fetches).toHaveLength(1)
  })

  it('shows the API message when a delete or a row action fails, without reloading', async () => {
    const { crud, fetches, log } = setup({
      remove: async () => {
        throw new ApiError(409, 'conflict', 'venue still has gateways')
      },
    })
    await flushPromises()
    expect(await crud.remove({ id: 'a', name: 'Alpha' })).toBe(false)
    expect(await crud.act(() => Promise.reject(new ApiError(403, 'forbidden', 'not allowed')))).toBe(false)
    expect(log.slice(1)).toEqual(['err:venue still has gateways', 'err:not allowed'])
    expect(fetches).toHaveLength(1)
    expect(await crud.act(() => Promise.resolve())).toBe(true)
    expect(fetches).toHaveLength(2)
  })
})
