/**
 * Console routes. Every page is its own chunk. The guard sends anonymous visitors to the
 * login page and keeps a role out of pages its permissions do not cover (the API would
 * refuse their data anyway; this only avoids showing an empty shell).
 */
import { createRouter, createWebHistory, type RouteRecordRaw, type Router } from 'vue-router'
import type { Permission } from '@/shared/permissions'
import { useAuthStore } from './stores/auth'
import { homePath } from './menu'

declare module 'vue-router' {
  interface RouteMeta {
    /** Reachable without a session. */
    public?: boolean
    perm?: Permission
    titleKey?: string
  }
}

export const routes: RouteRecordRaw[] = [
  {
    path: '/login',
    name: 'login',
    component: () => import('./views/LoginView.vue'),
    meta: { public: true, titleKey: 'auth.login' },
  },
  {
    path: '/',
    component: () => import('./layout/ConsoleLayout.vue'),
    children: [
      {
        path: '',
        name: 'home',
        redirect: () => {
          const auth = useAuthStore()
          return auth.isLoggedIn ? homePath(auth.role) : { name: 'login' }
        },
      },
      {
        path: 'dashboard',
        name: 'dashboard',
        component: () => import('./views/DashboardView.vue'),
        meta: { perm: 'venue:read', titleKey: 'menu.dashboard' },
      },
      {
        path: 'merchants',
        name: 'merchants',
        component: () => import('./views/MerchantsView.vue'),
        meta: { perm: 'merchant:manage', titleKey: 'menu.merchants' },
      },
      {
        path: 'venues',
        name: 'venues',
        component: () => import('./views/VenuesView.vue'),
        meta: { perm: 'venue:read', titleKey: 'menu.venues' },
      },
      {
        path: 'gateways',
        name: 'gateways',
        component: () => import('./views/GatewaysView.vue'),
        meta: { perm: 'device:read', titleKey: 'menu.gateways' },
      },
      {
        path: 'locks',
        name: 'locks',
        component: () => import('./views/LocksView.vue'),
        meta: { perm: 'device:read', titleKey: 'menu.locks' },
      },
      {
        path: 'orders',
        name: 'orders',
        component: () => import('./views/OrdersView.vue'),
        meta: { perm: 'order:read', titleKey: 'menu.orders' },
      },
      {
        path: 'orders/:id',
        name: 'order',
        component: () => import('./views/OrderDetailView.vue'),
        props: true,
        meta: { perm: 'order:read', titleKey: 'orders.detail' },
      },
      {
        path: 'alarms',
        name: 'alarms',
        component: () => import('./views/AlarmsView.vue'),
        meta: { perm: 'device:read', titleKey: 'menu.alarms' },
      },
      {
        path: 'reconciliation',
        name: 'reconciliation',
        component: () => import('./views/ReconciliationView.vue'),
        meta: { perm: 'merchant:manage', titleKey: 'menu.reconciliation' },
      },
      {
        path: 'firmware',
        name: 'firmware',
        component: () => import('./views/FirmwareView.vue'),
        meta: { perm: 'firmware:download', titleKey: 'menu.firmware' },
      },
      {
        path: 'settlements',
        name: 'settlements',
        component: () => import('./views/SettlementsView.vue'),
        meta: { perm: 'settlement:read', titleKey: 'menu.settlements' },
      },
      {
        path: 'users',
        name: 'users',
        component: () => import('./views/UsersView.vue'),
        meta: { perm: 'user:manage', titleKey: 'menu.users' },
      },
      {
        path: 'account',
        name: 'account',
        component: () => import('./views/AccountView.vue'),
        meta: { titleKey: 'menu.account' },
      },
      {
        path: ':pathMatch(.*)*',
        name: 'not-found',
        component: () => import('./views/NotFoundView.vue'),
        meta: { titleKey: 'notFound.title' },
      },
    ],
  },
]

export function createConsoleRouter(): Router {
  const router = createRouter({ history: createWebHistory('/'), routes })
  router.beforeEach((to) => {
    const auth = useAuthStore()
    if (to.meta.public) {
      return auth.isLoggedIn && to.name === 'login' ? homePath(auth.role) : true
    }
    if (!auth.isLoggedIn) {
      return { name: 'login', query: to.fullPath !== '/' ? { redirect: to.fullPath } : {} }
    }
    if (to.meta.perm && !auth.can(to.meta.perm)) {
      return homePath(auth.role)
    }
    return true
  })
  return router
}
