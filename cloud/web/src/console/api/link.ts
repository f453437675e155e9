/**
 * The gateway link as the console sees it: the live change feed (GET /api/v1/live, SSE,
 * cloud/src/link/live.rs), alarms (link/alarms.rs), a staff unlock (POST
 * /api/v1/locks/{id}/unlock, link/commands.rs) and a gateway's recent commands.
 * Live payloads follow link/ingest.rs `lock_change` / `gateway_change` / alarm changes.
 */
import { api } from './client'
import { seg, type ListParams, type Page } from '@/shared/http'

const V1 = '/api/v1'

export const LIVE_PATH = `${V1}/live`

export interface LockLive {
  lock_id: string
  gateway_id?: string
  status?: string
  door_closed?: boolean | null
  locked?: boolean | null
  fw_version?: string | null
  last_heartbeat_at?: number | null
}

export interface GatewayLive {
  gateway_id: string
  online?: boolean
  last_seen_at?: number | null
  outbox_pending?: number | null
  outbox_oldest_age_s?: number | null
}

export interface AlarmLive {
  alarm_id: string
  lock_id?: string | null
  gateway_id?: string
  kind?: string
  detail?: string | null
  raised_at?: number
  cleared_at?: number | null
  acked_at?: number | null
}

export type LiveChange =
  | { kind: 'lock'; data: LockLive }
  | { kind: 'gateway'; data: GatewayLive }
  | { kind: 'alarm'; data: AlarmLive }
  | { kind: 'order'; data: Record<string, unknown> & { order_id?: string; id?: string; status?: string } }

export interface Alarm {
  id: string
  merchant_id: string
  gateway_id: string
  lock_id: string | null
  kind: string
  detail: string | null
  raised_at: number
  cleared_at: number | null
  acked_at: number | null
  acked_by: string | null
  created_at: number
}

export interface AlarmListParams extends ListParams {
  /** open = not acknowledged and not cleared */
  state?: 'open' | 'acked' | 'cleared' | ''
  kind?: string
  lock_id?: string
  gateway_id?: string
}

export interface GatewayCommand {
  id: string
  gateway_id: string
  op: string
  body?: unknown
  exp_ms?: number
  status: 'sent' | 'acked' | 'expired' | string
  result?: string | null
  created_at: number
  acked_at: number | null
}

export interface UnlockResult {
  command_id?: string
  id?: string
  status?: string
}

export const alarmsApi = {
  list: (p: AlarmListParams) => api.get<Page<Alarm>>(`${V1}/alarms`, p),
  ack: (id: string) => api.post<Alarm>(`${V1}/alarms/${seg(id)}/ack`),
}

export const lockControlApi = {
  /** Staff unlock: the server signs a one-use maintenance token and sends `cmd unlock`. */
  unlock: (id: string, reason?: string) =>
    api.post<UnlockResult>(`${V1}/locks/${seg(id)}/unlock`, reason ? { reason } : {}),
}

export const gatewayCommandsApi = {
  list: (id: string, p: ListParams = {}) => api.get<Page<GatewayCommand> | GatewayCommand[]>(`${V1}/gateways/${seg(id)}/commands`, p),
}

/** The lock's live payload or a gateway's, parsed from one SSE event; null for anything else. */
export function toLiveChange(event: string, data: string): LiveChange | null {
  let parsed: unknown
  try {
    parsed = JSON.parse(data)
  } catch {
    return null
  }
  if (typeof parsed !== 'object' || parsed === null) {
    return null
  }
  // The server may send `event: change` with {kind, data} or `event: <kind>` with the data.
  const p = parsed as Record<string, unknown>
  let kind = event
  let body: unknown = p
  if ((event === 'message' || event === 'change') && typeof p['kind'] === 'string') {
    kind = p['kind']
    body = typeof p['data'] === 'object' && p['data'] !== null ? p['data'] : p
  }
  const b = body as Record<string, unknown>
  switch (kind) {
    case 'lock':
      return typeof b['lock_id'] === 'string' ? { kind, data: b as unknown as LockLive } : null
    case 'gateway':
      return typeof b['gateway_id'] === 'string' ? { kind, data: b as unknown as GatewayLive } : null
    case 'alarm':
      return typeof b['alarm_id'] === 'string' ? { kind, data: b as unknown as AlarmLive } : null
    case 'order':
      return { kind, data: b }
    default:
      return null
  }
}
