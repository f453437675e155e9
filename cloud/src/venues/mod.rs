//! Venues: the places a merchant runs locks in. A venue has gateways (one per venue in the
//! usual installation), and gateways have locks.

pub mod handlers;
pub mod store;
pub mod types;
