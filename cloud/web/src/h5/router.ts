/**
 * Phone pages under /h5/. A lock's printed QR code encodes `${public_base_url}/q/{qr_code}`
 * (cloud/src/locks/types.rs); the server is expected to send that to /h5/l/{qr_code}, and
 * /h5/q/{qr_code} is accepted here too.
 */
import { createRouter, createWebHistory, type Router } from 'vue-router'

export function createH5Router(): Router {
  return createRouter({
    history: createWebHistory('/h5/'),
    routes: [
      { path: '/l/:code', name: 'lock', component: () => import('./views/LockView.vue'), props: true },
      { path: '/q/:code', redirect: (to) => ({ name: 'lock', params: { code: to.params['code'] } }) },
      { path: '/o/:id', name: 'order', component: () => import('./views/OrderView.vue'), props: true },
      { path: '/orders', name: 'orders', component: () => import('./views/MyOrdersView.vue') },
      { path: '/:pathMatch(.*)*', name: 'not-found', component: () => import('./views/ScanAgainView.vue') },
    ],
  })
}
