/**
 * The console's navigation, filtered by what the logged-in role may do. Items name the
 * permission of the API they read, so a role never sees a page whose data it cannot load.
 */
import { can, type Permission } from '@/shared/permissions'

export type IconName =
  | 'dashboard'
  | 'venue'
  | 'gateway'
  | 'lock'
  | 'order'
  | 'settlement'
  | 'user'
  | 'merchant'
  | 'alarm'
  | 'reconciliation'
  | 'firmware'

export interface MenuItem {
  /** Route name (router.ts) */
  name: string
  path: string
  /** i18n key of the label */
  titleKey: string
  icon: IconName
  perm: Permission
}

export const MENU: readonly MenuItem[] = [
  { name: 'dashboard', path: '/dashboard', titleKey: 'menu.dashboard', icon: 'dashboard', perm: 'venue:read' },
  { name: 'merchants', path: '/merchants', titleKey: 'menu.merchants', icon: 'merchant', perm: 'merchant:manage' },
  { name: 'venues', path: '/venues', titleKey: 'menu.venues', icon: 'venue', perm: 'venue:read' },
  { name: 'gateways', path: '/gateways', titleKey: 'menu.gateways', icon: 'gateway', perm: 'device:read' },
  { name: 'locks', path: '/locks', titleKey: 'menu.locks', icon: 'lock', perm: 'device:read' },
  { name: 'orders', path: '/orders', titleKey: 'menu.orders', icon: 'order', perm: 'order:read' },
  { name: 'alarms', path: '/alarms', titleKey: 'menu.alarms', icon: 'alarm', perm: 'device:read' },
  { name: 'settlements', path: '/settlements', titleKey: 'menu.settlements', icon: 'settlement', perm: 'settlement:read' },
  {
    name: 'reconciliation',
    path: '/reconciliation',
    titleKey: 'menu.reconciliation',
    icon: 'reconciliation',
    // Platform admins only: reports span merchants and the provider's whole bill.
    perm: 'merchant:manage',
  },
  { name: 'users', path: '/users', titleKey: 'menu.users', icon: 'user', perm: 'user:manage' },
  // Platform admins publish; technicians download to flash.
  { name: 'firmware', path: '/firmware', titleKey: 'menu.firmware', icon: 'firmware', perm: 'firmware:download' },
]

export function visibleMenu(role: string | null | undefined): MenuItem[] {
  return MENU.filter((m) => can(role, m.perm))
}

/** Where a role lands after login: the first page it may see (or the account page). */
export function homePath(role: string | null | undefined): string {
  return visibleMenu(role)[0]?.path ?? '/account'
}
