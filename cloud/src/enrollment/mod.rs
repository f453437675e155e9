//! Enrollment codes: one-time, expiring codes a merchant or operator makes for a venue and
//! a technician types into the gateway's enroll command. Only a SHA-256 of the code is
//! stored; the code itself is shown once, in the create response. Redeeming a code (the
//! gateway's side) comes with the gateway link; [`store::claim`] is the conditional update
//! it will use.

pub mod handlers;
pub mod store;
pub mod types;
