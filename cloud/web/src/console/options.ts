/** Option searches for the remote selects (first 20 matches of a list endpoint's `q`). */
import { gatewaysApi, locksApi, merchantsApi, venuesApi } from './api/resources'
import type { Option } from './components/RemoteSelect.vue'

export async function merchantOptions(q: string): Promise<Option[]> {
  const p = await merchantsApi.list({ q, per_page: 20, sort: 'name' })
  return p.items.map((m) => ({ value: m.id, label: m.name }))
}

export async function venueOptions(q: string): Promise<Option[]> {
  const p = await venuesApi.list({ q, per_page: 20, sort: 'name' })
  return p.items.map((v) => ({ value: v.id, label: v.name }))
}

export function gatewayOptionsIn(venueId: string | null) {
  return async (q: string): Promise<Option[]> => {
    const p = await gatewaysApi.list({ q, per_page: 20, sort: 'name', venue_id: venueId ?? undefined })
    return p.items.map((g) => ({ value: g.id, label: g.name }))
  }
}

export async function lockOptions(q: string): Promise<Option[]> {
  const p = await locksApi.list({ q, per_page: 20 })
  return p.items.map((l) => ({ value: l.id, label: l.name ? `${l.name} (${l.device_code})` : l.device_code }))
}
