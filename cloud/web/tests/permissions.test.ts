import { describe, expect, it } from 'vitest'
import { assignableRoles, can, permissionsOf } from '@/shared/permissions'
import { homePath, visibleMenu } from '@/console/menu'

const names = (role: string | null) => visibleMenu(role).map((m) => m.name)

describe('permissions and menus', () => {
  it('mirrors the rbac.rs matrix', () => {
    expect(can('platform_admin', 'firmware:manage')).toBe(true)
    expect(can('merchant_owner', 'merchant:manage')).toBe(false)
    expect(can('merchant_owner', 'user:manage')).toBe(true)
    expect(can('merchant_staff', 'venue:write')).toBe(false)
    expect(can('merchant_staff', 'device:unlock')).toBe(true)
    expect(can('technician', 'device:write')).toBe(true)
    expect(can('technician', 'order:read')).toBe(false)
    expect(can('technician', 'firmware:download')).toBe(true)
    expect(can('technician', 'firmware:manage')).toBe(false)
    expect(can('merchant_owner', 'firmware:download')).toBe(false)
    expect(permissionsOf('nobody')).toEqual([])
    expect(can(null, 'venue:read')).toBe(false)
  })

  it('shows each role only what it may do', () => {
    expect(names('platform_admin')).toEqual([
      'dashboard',
      'merchants',
      'venues',
      'gateways',
      'locks',
      'orders',
      'alarms',
      'settlements',
      'reconciliation',
      'users',
      'firmware',
    ])
    expect(names('merchant_owner')).toEqual(['dashboard', 'venues', 'gateways', 'locks', 'orders', 'alarms', 'settlements', 'users'])
    expect(names('merchant_staff')).toEqual(['dashboard', 'venues', 'gateways', 'locks', 'orders', 'alarms'])
    expect(names('technician')).toEqual(['dashboard', 'venues', 'gateways', 'locks', 'alarms', 'firmware'])
    expect(names(null)).toEqual([])
    expect(names('unknown_role')).toEqual([])
  })

  it('sends each role to a page it may see', () => {
    expect(homePath('merchant_owner')).toBe('/dashboard')
    expect(homePath(null)).toBe('/account')
  })

  it('offers only roles the caller may assign', () => {
    expect(assignableRoles('platform_admin')).toContain('platform_admin')
    expect(assignableRoles('merchant_owner')).toEqual(['merchant_owner', 'merchant_staff', 'technician'])
    expect(assignableRoles('merchant_staff')).toEqual([])
  })
})
