//! The gateway link: everything between the cloud and its gateways. [`keys`] holds the
//! cloud's signing keys (encrypted at rest); [`enroll`] turns a one-time code and a gateway
//! public key into an enrolled gateway with MQTT credentials; [`gwauth`] authenticates
//! gateway-signed HTTP requests; [`ingest`] verifies and applies gateway messages (shared
//! by the MQTT bridge and HTTP sync) exactly once; [`sync`] serves the gateway's event drain
//! and its signed pull; [`live`] streams tenant-scoped changes to the console; [`alarms`]
//! lists and acknowledges alarms; [`metrics`] counts what the link accepted and refused.
//! [`bridge`] is the MQTT connection (consumes gateway topics in batches, publishes
//! commands); [`commands`] signs, records and settles commands; [`liveness`] marks silent
//! locks and gateways offline.

pub mod alarms;
pub mod bridge;
pub mod commands;
pub mod enroll;
pub mod gwauth;
pub mod ingest;
pub mod keys;
pub mod live;
pub mod liveness;
pub mod metrics;
pub mod sync;
