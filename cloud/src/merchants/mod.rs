//! Merchants are the tenants: every venue, gateway, lock, user and (later) order belongs
//! to one. Only platform admins manage them; the commission rate is in basis points.

pub mod handlers;
pub mod store;
pub mod types;
