/**
 * A gateway's health as far as the API shows it today: its enrollment status and when it
 * was last heard from (`last_seen_at`, updated by heartbeats and sync). Richer signals
 * (uplink, MQTT session, outbox depth) arrive with the device-telemetry work.
 */
import type { Gateway } from './api/types'

export type GatewayHealth = 'online' | 'stale' | 'offline' | 'unknown'

/** Heard from within this many minutes: online. */
export const ONLINE_MINUTES = 3
/** Heard from within this many minutes: late heartbeat; longer: offline. */
export const STALE_MINUTES = 15

export function gatewayHealth(g: Pick<Gateway, 'status' | 'last_seen_at'>, now: number = Date.now()): GatewayHealth {
  if (g.status !== 'enrolled' || g.last_seen_at === null) {
    return 'unknown'
  }
  const minutes = (now - g.last_seen_at) / 60_000
  if (minutes <= ONLINE_MINUTES) {
    return 'online'
  }
  return minutes <= STALE_MINUTES ? 'stale' : 'offline'
}

export const HEALTH_TAG: Record<GatewayHealth, 'success' | 'warning' | 'danger' | 'info'> = {
  online: 'success',
  stale: 'warning',
  offline: 'danger',
  unknown: 'info',
}
