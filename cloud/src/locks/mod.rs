//! Locks: controllers on a gateway's RS-485 bus (address 1..=247), each with a QR code that
//! users scan and a set of price plans in fen. Replacing the plans keeps the old rows
//! (soft-deleted) so orders made under them still resolve.

pub mod handlers;
pub mod store;
pub mod types;
