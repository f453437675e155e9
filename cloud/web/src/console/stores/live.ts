/**
 * Live device state for the pages that show it (locks, gateways, alarms, dashboard): the
 * newest lock and gateway payloads from the SSE feed, keyed by id, and a change counter
 * pages watch to refresh lists. The connection runs while at least one page uses it
 * (`useLive()` in setup) and stops at logout.
 */
import { defineStore } from 'pinia'
import { onBeforeUnmount, reactive, ref } from 'vue'
import { LiveStream, type LiveState } from '@/console/live'
import { LIVE_PATH, type AlarmLive, type GatewayLive, type LiveChange, type LockLive } from '@/console/api/link'
import { useAuthStore } from './auth'

type Listener = (c: LiveChange) => void

export const useLiveStore = defineStore('live', () => {
  const auth = useAuthStore()
  const state = ref<LiveState>('idle')
  const locks = reactive(new Map<string, LockLive>())
  const gateways = reactive(new Map<string, GatewayLive>())
  const lastAlarm = ref<AlarmLive | null>(null)
  const changes = ref(0)
  const listeners = new Set<Listener>()
  let users = 0

  const stream = new LiveStream({
    url: LIVE_PATH,
    accessToken: () => auth.accessToken,
    refresh: () => auth.refresh(),
    onState: (s) => (state.value = s),
    onChange: (c) => {
      if (c.kind === 'lock') {
        locks.set(c.data.lock_id, { ...locks.get(c.data.lock_id), ...c.data })
      } else if (c.kind === 'gateway') {
        gateways.set(c.data.gateway_id, { ...gateways.get(c.data.gateway_id), ...c.data })
      } else if (c.kind === 'alarm') {
        lastAlarm.value = c.data
      }
      changes.value++
      listeners.forEach((l) => l(c))
    },
  })

  function acquire(): void {
    users++
    if (users === 1 && auth.isLoggedIn) {
      stream.start()
    }
  }

  function release(): void {
    users = Math.max(0, users - 1)
    if (users === 0) {
      stream.stop()
    }
  }

  function subscribe(l: Listener): () => void {
    listeners.add(l)
    return () => listeners.delete(l)
  }

  auth.onAuthLost(() => stream.stop())

  return { state, locks, gateways, lastAlarm, changes, acquire, release, subscribe }
})

/** Uses the live feed while the calling component is mounted; `onChange` sees every change. */
export function useLive(onChange?: Listener) {
  const live = useLiveStore()
  live.acquire()
  const off = onChange ? live.subscribe(onChange) : null
  onBeforeUnmount(() => {
    off?.()
    live.release()
  })
  return live
}
