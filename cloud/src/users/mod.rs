//! Users: platform admins (no merchant) and the people of a merchant (owner, staff,
//! technicians). Merchant owners manage their own merchant's users; platform admins manage
//! everyone. `admin create-user` on the command line uses the same validation and store.

pub mod handlers;
pub mod store;
pub mod types;
