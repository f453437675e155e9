//! The gateway link: everything between the cloud and its gateways. [`bridge`] is the MQTT
//! connection (consumes gateway topics in batches, publishes commands); [`commands`] signs,
//! records and settles commands; [`liveness`] marks silent locks and gateways offline.

pub mod bridge;
pub mod commands;
pub mod ingest;
pub mod keys;
pub mod liveness;
