//! Gateways: the venue computers that drive a lock bus. Here they are records a merchant
//! or technician creates for a venue; enrollment (the gateway's own key, MQTT credentials)
//! fills in `status`, `public_key` and `enrolled_at` and comes with the gateway link.

pub mod handlers;
pub mod store;
pub mod types;
