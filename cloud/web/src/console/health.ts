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

/**
 * The three health signals of a gateway the console shows side by side:
 * - link: is its MQTT session up (retained `state` / Last Will, `online`);
 * - heartbeat: how recently it was heard from (`last_seen_at`, see gatewayHealth);
 * - outbox: events waiting to reach the cloud (store-and-forward backlog and its age).
 */
export type LinkSignal = 'up' | 'down' | 'unknown'
export type OutboxSignal = 'empty' | 'draining' | 'stuck' | 'unknown'

/** Events older than this in the outbox mean the uplink is not draining. */
export const OUTBOX_STUCK_S = 300

export function linkSignal(g: { status: string; online?: boolean | null }): LinkSignal {
  if (g.status !== 'enrolled' || g.online === undefined || g.online === null) {
    return 'unknown'
  }
  return g.online ? 'up' : 'down'
}

export function outboxSignal(g: { outbox_pending?: number | null; outbox_oldest_age_s?: number | null }): OutboxSignal {
  if (g.outbox_pending === undefined || g.outbox_pending === null) {
    return 'unknown'
  }
  if (g.outbox_pending === 0) {
    return 'empty'
  }
  return (g.outbox_oldest_age_s ?? 0) >= OUTBOX_STUCK_S ? 'stuck' : 'draining'
}

export const SIGNAL_TAG: Record<LinkSignal | OutboxSignal, 'success' | 'warning' | 'danger' | 'info'> = {
  up: 'success',
  down: 'danger',
  empty: 'success',
  draining: 'warning',
  stuck: 'danger',
  unknown: 'info',
}
