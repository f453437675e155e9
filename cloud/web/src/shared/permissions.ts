/**
 * Roles and permissions, mirroring `cloud/src/rbac.rs` (the server is the authority: this
 * copy only decides what the UI offers, never what is allowed).
 */
export const ROLES = ['platform_admin', 'merchant_owner', 'merchant_staff', 'technician'] as const
export type Role = (typeof ROLES)[number]

export const PERMISSIONS = [
  'merchant:manage',
  'venue:read',
  'venue:write',
  'device:read',
  'device:write',
  'device:unlock',
  'user:manage',
  'order:read',
  'order:refund',
  'settlement:read',
  'firmware:manage',
  'firmware:download',
] as const
export type Permission = (typeof PERMISSIONS)[number]

const MATRIX: Record<Role, readonly Permission[]> = {
  platform_admin: PERMISSIONS,
  merchant_owner: [
    'venue:read',
    'venue:write',
    'device:read',
    'device:write',
    'device:unlock',
    'user:manage',
    'order:read',
    'order:refund',
    'settlement:read',
  ],
  merchant_staff: ['venue:read', 'device:read', 'device:unlock', 'order:read'],
  // Technicians install gateways, wire locks and flash firmware; they see no money.
  technician: ['venue:read', 'device:read', 'device:write', 'firmware:download'],
}

export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s)
}

export function permissionsOf(role: string | null | undefined): readonly Permission[] {
  return role && isRole(role) ? MATRIX[role] : []
}

export function can(role: string | null | undefined, perm: Permission): boolean {
  return permissionsOf(role).includes(perm)
}

/** Roles a caller may assign when creating a user (the server refuses the rest). */
export function assignableRoles(role: string | null | undefined): Role[] {
  if (role === 'platform_admin') {
    return [...ROLES]
  }
  if (can(role, 'user:manage')) {
    return ['merchant_owner', 'merchant_staff', 'technician']
  }
  return []
}
