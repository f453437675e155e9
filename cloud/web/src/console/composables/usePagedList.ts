/**
 * A server-paged list: the page, its rows, the total, and loading/error state. Changing a
 * filter goes back to page 1; a response that arrives after a newer request was made is
 * dropped, so fast typing in a search box never shows stale rows.
 */
import { ref, shallowRef, watch, type Ref } from 'vue'
import type { Page } from '@/shared/http'
import { errorMessage } from '@/shared/formErrors'

export const PAGE_SIZES = [10, 20, 50, 100] as const

export interface PagedParams {
  page: number
  per_page: number
}

export function usePagedList<T, F extends object>(
  fetchPage: (params: F & PagedParams) => Promise<Page<T>>,
  filters: Ref<F>,
  opts: { perPage?: number; immediate?: boolean } = {},
) {
  const items = shallowRef<T[]>([])
  const total = ref(0)
  // False when the server stopped counting: `total` is then a lower bound.
  const totalExact = ref(true)
  const page = ref(1)
  const perPage = ref(opts.perPage ?? 20)
  const loading = ref(false)
  const error = ref<string | null>(null)
  let seq = 0

  async function reload(): Promise<void> {
    const mine = ++seq
    loading.value = true
    error.value = null
    try {
      // Empty filter values are left out of the query by the HTTP client.
      const res = await fetchPage({ ...filters.value, page: page.value, per_page: perPage.value })
      if (mine !== seq) {
        return
      }
      items.value = res.items
      total.value = res.total
      totalExact.value = res.total_exact !== false
      // A delete may leave the current page past the end: step back once.
      if (res.items.length === 0 && res.total > 0 && page.value > 1) {
        page.value = Math.max(1, Math.ceil(res.total / perPage.value))
        await reload()
      }
    } catch (e) {
      if (mine === seq) {
        error.value = errorMessage(e)
        items.value = []
      }
    } finally {
      if (mine === seq) {
        loading.value = false
      }
    }
  }

  function setPage(p: number): void {
    page.value = p
    void reload()
  }

  function setPerPage(n: number): void {
    perPage.value = n
    page.value = 1
    void reload()
  }

  watch(
    filters,
    () => {
      page.value = 1
      void reload()
    },
    { deep: true },
  )

  if (opts.immediate !== false) {
    void reload()
  }

  return { items, total, totalExact, page, perPage, loading, error, reload, setPage, setPerPage }
}
