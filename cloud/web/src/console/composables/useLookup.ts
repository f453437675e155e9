/**
 * Names for ids shown in tables (a gateway's venue, a lock's gateway). The API has no batch
 * lookup, so each distinct id is fetched once and cached for the page's lifetime.
 */
import { reactive } from 'vue'

export function useLookup(getName: (id: string) => Promise<string>) {
  const names = reactive(new Map<string, string>())
  const inFlight = new Set<string>()

  function ensure(ids: Iterable<string | null | undefined>): void {
    for (const id of new Set(ids)) {
      if (!id || names.has(id) || inFlight.has(id)) {
        continue
      }
      inFlight.add(id)
      getName(id)
        .then((n) => names.set(id, n))
        .catch(() => names.set(id, id))
        .finally(() => inFlight.delete(id))
    }
  }

  function name(id: string | null | undefined): string {
    return id ? (names.get(id) ?? '…') : '—'
  }

  return { ensure, name }
}
