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

export interface AlarmListParams extends Omit<ListParams, 'q'> {
  /** 'true': neither acknowledged nor cleared; 'false': the others. */
  open?: 'true' | 'false' | ''
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
  lock_id?: string | null
  status: 'sent' | 'acked' | 'expired' | string
  result?: string | null
  latency_ms?: number | null
  created_by?: string | null
  created_at: number
  acked_at: number | null
}

/** link/commands.rs `UnlockSent`. */
export interface UnlockResult {
  command_id?: string
  id?: string
  gateway_id?: string
  token_id?: string
  exp_ms?: number
  status?: string
}

export const alarmsApi = {
  list: (p: AlarmListParams) => api.get<Page<Alarm>>(`${V1}/alarms`, p),
  ack: (id: string) => api.post<Alarm>(`${V1}/alarms/${seg(id)}/ack`),
}

export const lockControlApi = {
  /** Staff unlock: the server signs a one-use maintenance token and sends `cmd unlock`. */
  unlock: (id: string, reason?: string) =>
    api.post<UnlockResult>(`${V1}/locks/${seg(id)}/unlock`, reason ? { reason } : undefined),
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
  // link/live.rs sends `event: <kind>` with `{kind, entity_id, merchant_id, at, data}`;
  // a bare payload (`event: lock`, data = the lock change) is accepted too.
  const p = parsed as Record<string, unknown>
  let kind = event
  let body: unknown = p
  if (typeof p['kind'] === 'string' && typeof p['data'] === 'object' && p['data'] !== null) {
    kind = p['kind']
    body = p['data']
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
