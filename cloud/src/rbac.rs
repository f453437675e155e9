//! Roles, permissions and the one table that says which role holds which permission.
//! Handlers never compare roles: routes declare the permission they need (see
//! `http::routes`), and tenancy (which merchant's rows a caller may see) is applied in the
//! stores through [`Scope`].

use serde::{Deserialize, Serialize};

/// What a user is. Stored as text in `users.role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    PlatformAdmin,
    MerchantOwner,
    MerchantStaff,
    Technician,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::PlatformAdmin,
        Role::MerchantOwner,
        Role::MerchantStaff,
        Role::Technician,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::MerchantOwner => "merchant_owner",
            Role::MerchantStaff => "merchant_staff",
            Role::Technician => "technician",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether users of this role belong to a merchant.
    pub fn is_merchant_role(self) -> bool {
        self != Role::PlatformAdmin
    }

    pub fn has(self, p: Permission) -> bool {
        permissions_of(self).contains(&p)
    }
}

/// Something a route may require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    MerchantManage,
    VenueRead,
    VenueWrite,
    DeviceRead,
    DeviceWrite,
    DeviceUnlock,
    UserManage,
    OrderRead,
    OrderRefund,
    SettlementRead,
    FirmwareManage,
    /// Fetch a published firmware image to flash it (technicians on site).
    FirmwareDownload,
}

impl Permission {
    pub const ALL: [Permission; 12] = [
        Permission::MerchantManage,
        Permission::VenueRead,
        Permission::VenueWrite,
        Permission::DeviceRead,
        Permission::DeviceWrite,
        Permission::DeviceUnlock,
        Permission::UserManage,
        Permission::OrderRead,
        Permission::OrderRefund,
        Permission::SettlementRead,
        Permission::FirmwareManage,
        Permission::FirmwareDownload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::MerchantManage => "merchant:manage",
            Permission::VenueRead => "venue:read",
            Permission::VenueWrite => "venue:write",
            Permission::DeviceRead => "device:read",
            Permission::DeviceWrite => "device:write",
            Permission::DeviceUnlock => "device:unlock",
            Permission::UserManage => "user:manage",
            Permission::OrderRead => "order:read",
            Permission::OrderRefund => "order:refund",
            Permission::SettlementRead => "settlement:read",
            Permission::FirmwareManage => "firmware:manage",
            Permission::FirmwareDownload => "firmware:download",
        }
    }
}

/// The role × permission matrix, written down once.
pub fn permissions_of(role: Role) -> &'static [Permission] {
    use Permission::*;
    match role {
        Role::PlatformAdmin => &Permission::ALL,
        Role::MerchantOwner => &[
            VenueRead,
            VenueWrite,
            DeviceRead,
            DeviceWrite,
            DeviceUnlock,
            UserManage,
            OrderRead,
            OrderRefund,
            SettlementRead,
        ],
        Role::MerchantStaff => &[VenueRead, DeviceRead, DeviceUnlock, OrderRead],
        // Technicians install gateways, wire locks and flash their firmware; they see no
        // money.
        Role::Technician => &[VenueRead, DeviceRead, DeviceWrite, FirmwareDownload],
    }
}

/// Which merchant's rows a caller may touch. Stores take this, not a role, so a missing
/// tenant filter is a type error rather than a forgotten `WHERE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Platform admins: every merchant.
    All,
    /// Everyone else: their own merchant only.
    Merchant(String),
}

impl Scope {
    /// The merchant id to filter by, or None for all.
    pub fn merchant(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Merchant(m) => Some(m),
        }
    }

    /// Whether a row of `merchant_id` is visible in this scope.
    pub fn allows(&self, merchant_id: &str) -> bool {
        self.merchant().is_none_or(|m| m == merchant_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_matrix_is_as_specified() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert!(Role::PlatformAdmin.has(Permission::FirmwareManage));
        assert!(!Role::MerchantOwner.has(Permission::MerchantManage));
        assert!(!Role::MerchantOwner.has(Permission::FirmwareManage));
        assert!(Role::MerchantOwner.has(Permission::UserManage));
        assert!(!Role::MerchantStaff.has(Permission::VenueWrite));
        assert!(Role::MerchantStaff.has(Permission::DeviceUnlock));
        assert!(Role::Technician.has(Permission::DeviceWrite));
        assert!(!Role::Technician.has(Permission::OrderRead));
        assert!(Role::Technician.has(Permission::FirmwareDownload));
        assert!(!Role::Technician.has(Permission::FirmwareManage));
        assert!(!Role::MerchantOwner.has(Permission::FirmwareDownload));
        assert!(Scope::All.allows("m1"));
        assert!(!Scope::Merchant("m2".into()).allows("m1"));
    }
}
