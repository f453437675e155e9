import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { defineComponent, h, ref } from 'vue'
import { flushPromises, mount } from '@vue/test-utils'
import { createPinia, setActivePinia } from 'pinia'
import { createMemoryHistory, createRouter } from 'vue-router'
import { setupI18n } from '@/shared/i18n'
import { usePagedList } from '@/console/composables/usePagedList'
import { useForm } from '@/console/composables/useForm'
import { checks } from '@/shared/validation'
import { ApiError, type Page } from '@/shared/http'
import { useAuthStore } from '@/console/stores/auth'
import LoginView from '@/console/views/LoginView.vue'
import StateBlock from '@/console/components/StateBlock.vue'
import PricePlansEditor from '@/console/components/PricePlansEditor.vue'
import ListPager from '@/console/components/ListPager.vue'
import { apiError, mockFetch, tokens } from './helpers'

beforeEach(() => {
  localStorage.clear()
  setActivePinia(createPinia())
})
afterEach(() => vi.unstubAllGlobals())

/** Runs a composable inside a component so its watchers and i18n work. */
function withSetup<T>(fn: () => T): { result: T } {
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
  return { result }
}

describe('usePagedList', () => {
  it('pages on the server and goes back to page 1 when a filter changes', async () => {
    const seen: object[] = []
    const fetchPage = async (p: object): Promise<Page<number>> => {
      seen.push(p)
      return { items: [1, 2], page: 1, per_page: 2, total: 5 }
    }
    const filters = ref({ q: '' })
    const { result } = withSetup(() => usePagedList(fetchPage, filters, { perPage: 2 }))
    await flushPromises()
    expect(result.items.value).toEqual([1, 2])
    expect(result.total.value).toBe(5)
    result.setPage(3)
    await flushPromises()
    filters.value.q = 'abc'
    await flushPromises()
    expect(seen).toEqual([
      { q: '', page: 1, per_page: 2 },
      { q: '', page: 3, per_page: 2 },
      { q: 'abc', page: 1, per_page: 2 },
    ])
  })

  it('drops a slow answer that a newer request overtook', async () => {
    const resolvers: ((p: Page<string>) => void)[] = []
    const fetchPage = () => new Promise<Page<string>>((r) => resolvers.push(r))
    const { result } = withSetup(() => usePagedList(fetchPage, ref({})))
    void result.reload()
    resolvers[1]!({ items: ['new'], page: 1, per_page: 20, total: 1 })
    await flushPromises()
    resolvers[0]!({ items: ['old'], page: 1, per_page: 20, total: 1 })
    await flushPromises()
    expect(result.items.value).toEqual(['new'])
    expect(result.loading.value).toBe(false)
  })

  it('knows when the server stopped counting', async () => {
    let exact: boolean | undefined = false
    const fetchPage = async (): Promise<Page<number>> => ({
      items: [1],
      page: 1,
      per_page: 20,
      total: 10_000,
      ...(exact === undefined ? {} : { total_exact: exact }),
    })
    const { result } = withSetup(() => usePagedList(fetchPage, ref({})))
    await flushPromises()
    expect(result.total.value).toBe(10_000)
    expect(result.totalExact.value).toBe(false)
    exact = undefined // an older server without the field: its totals were exact
    await result.reload()
    expect(result.totalExact.value).toBe(true)
  })

  it('exposes the error message', async () => {
    const fetchPage = () => Promise.reject(new ApiError(403, 'forbidden', 'your role does not allow this'))
    const { result } = withSetup(() => usePagedList(fetchPage, ref({})))
    await flushPromises()
    expect(result.error.value).toBe('your role does not allow this')
    expect(result.items.value).toEqual([])
  })
})

describe('useForm', () => {
  it('refuses to send invalid input and maps server errors to fields', async () => {
    const { result: f } = withSetup(() => useForm(['name', 'phone'] as const))
    expect(f.check({ name: '', phone: 'x' }, { name: [checks.name], phone: [checks.optionalPhone] })).toBe(false)
    expect(f.errors.value).toEqual({ name: '请输入 1–100 个字符', phone: '请输入 6–20 位数字，可以 + 开头' })
    expect(f.check({ name: 'ok', phone: '' }, { name: [checks.name], phone: [checks.optionalPhone] })).toBe(true)
    const ok = await f.submit(() => Promise.reject(new ApiError(422, 'validation_failed', 'phone: 6-20 digits', { field: 'phone' })))
    expect(ok).toBe(false)
    expect(f.errors.value).toEqual({ phone: '6-20 digits' })
    expect(f.saving.value).toBe(false)
  })
})

describe('useForm with renamed fields (change password)', () => {
  it('adds cross-field errors and maps current_password onto the form field', async () => {
    const { result: f } = withSetup(() =>
      useForm(['current', 'next', 'confirm'] as const, { current_password: 'current', new_password: 'next' }),
    )
    const rules = { current: [checks.required], next: [checks.password], confirm: [checks.required] }
    expect(f.check({ current: 'a', next: 'long-enough', confirm: 'other' }, rules, { confirm: 'validation.passwordMismatch' })).toBe(false)
    expect(f.errors.value).toEqual({ confirm: '两次输入的密码不一致' })
    await f.submit(() =>
      Promise.reject(new ApiError(422, 'validation_failed', 'current_password: is not your current password', { field: 'current_password' })),
    )
    expect(f.errors.value).toEqual({ current: 'is not your current password' })
  })
})

describe('components', () => {
  it('StateBlock shows the error and offers a retry', async () => {
    const w = mount(StateBlock, {
      props: { error: 'boom', empty: true },
      global: { plugins: [setupI18n()] },
    })
    expect(w.text()).toContain('加载失败')
    expect(w.text()).toContain('boom')
    await w.find('button').trigger('click')
    expect(w.emitted('retry')).toHaveLength(1)
  })

  it('PricePlansEditor adds and removes rows', async () => {
    const rows = ref([{ name: 'a', duration: '60', priceYuan: '1' }])
    const w = mount(PricePlansEditor, {
      props: { modelValue: rows.value, errors: [], 'onUpdate:modelValue': (v: typeof rows.value) => (rows.value = v) },
      global: { plugins: [setupI18n()] },
    })
    const add = w.findAll('button').find((b) => b.text() === '添加方案')!
    await add.trigger('click')
    expect(rows.value).toHaveLength(2)
    expect(rows.value[1]).toEqual({ name: '', duration: '60', priceYuan: '' })
  })

  async function mountLogin() {
    const router = createRouter({
      history: createMemoryHistory(),
      routes: [
        { path: '/login', name: 'login', component: LoginView },
        { path: '/dashboard', component: { render: () => h('div', 'dash') } },
        { path: '/venues', component: { render: () => h('div', 'venues') } },
      ],
    })
    await router.push('/login?redirect=/venues')
    const pinia = createPinia()
    setActivePinia(pinia)
    useAuthStore().attach()
    const w = mount(LoginView, { global: { plugins: [setupI18n(), router, pinia] }, attachTo: document.body })
    return { w, router }
  }

  it('login validates before sending', async () => {
    const calls = mockFetch(() => ({ status: 200, body: tokens(1) }))
    const { w } = await mountLogin()
    await w.find('form').trigger('submit')
    await flushPromises()
    expect(calls).toHaveLength(0)
    // Both fields are flagged (Element Plus animates the message itself in, which the
    // test renderer stubs, so the flag is what is checked).
    expect(w.findAll('.el-form-item.is-error')).toHaveLength(2)
    w.unmount()
  })

  it('login shows the API message in place, then logs in and follows the redirect', async () => {
    let fail = true
    mockFetch(() =>
      fail ? { status: 401, body: apiError('invalid_credentials', 'login or password is wrong') } : { status: 200, body: tokens(1) },
    )
    const { w, router } = await mountLogin()
    await w.find('input[name="login"]').setValue('owner')
    await w.find('input[name="password"]').setValue('wrong-password')
    await w.find('form').trigger('submit')
    await flushPromises()
    expect(w.text()).toContain('login or password is wrong')
    fail = false
    await w.find('form').trigger('submit')
    await flushPromises()
    expect(router.currentRoute.value.fullPath).toBe('/venues')
    w.unmount()
  })
})

describe('ListPager', () => {
  const mountPager = (exact: boolean | undefined) =>
    mount(ListPager, {
      props: { page: 1, perPage: 20, total: 10_000, ...(exact === undefined ? {} : { exact }) },
      global: { plugins: [setupI18n()] },
    })

  it('shows a capped total as a lower bound', () => {
    const w = mountPager(false)
    expect(w.find('[data-testid="pager-at-least"]').exists()).toBe(true)
    expect(w.text()).toContain('10000')
    expect(w.find('.el-pagination__total').exists()).toBe(false)
  })

  it('shows an exact total as before', () => {
    const w = mountPager(undefined)
    expect(w.find('[data-testid="pager-at-least"]').exists()).toBe(false)
    expect(w.find('.el-pagination__total').exists()).toBe(true)
  })
})
