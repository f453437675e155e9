//! Accounts: password hashing, access tokens, rotating refresh tokens with reuse detection,
//! login throttling that survives restarts, and the `/api/v1/auth/*` handlers.

pub mod handlers;
pub mod jwt;
pub mod password;
pub mod store;
