//! The Dumeiren wire contract, version 1, as a pure library.
//!
//! Everything that crosses a process or machine boundary between the cloud, the gateway
//! agent, the lock controllers and the technician CLI is defined here once, so that no
//! other crate hand-rolls a byte layout or a register number:
//!
//! - [`token`]: the 135-byte signed unlock token, its `DMR1.` text form, the short code, and
//!   the gateway's accept/reject decision ([`token::verify`]) as a pure function whose
//!   time, revocation and use-count inputs are supplied by the caller.
//! - [`jws`] and [`message`]: signed JSON messages (JWS compact, EdDSA) and the typed
//!   payloads of every MQTT message, command, event and ack.
//! - [`topic`]: MQTT topic builders and a parser.
//! - [`registers`] and [`modbus`]: the lock controller's Modbus register map with typed
//!   decoders, and a transport-free Modbus RTU/TCP frame codec shared by the simulator and
//!   the bus driver.
//! - [`firmware`]: signed firmware images.
//! - [`keys`]: Ed25519 keys, their base64url public form and key files.
//!
//! The crate does no network I/O and pulls in no async runtime. The only file-system access
//! is [`keys::load_signing_key`]/[`keys::save_signing_key`], kept here so every binary
//! enforces the same permission rules on private keys. Nothing in the crate prints: every
//! failure is a typed error that names what was wrong.

pub mod b64;
pub mod firmware;
pub mod jws;
pub mod keys;
pub mod message;
pub mod modbus;
pub mod registers;
pub mod token;
pub mod topic;

/// The version of the wire contract this crate implements.
pub const PROTOCOL_VERSION: u8 = 1;
