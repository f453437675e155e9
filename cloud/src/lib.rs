//! `dmr-cloud`: the Dumeiren control plane. It keeps the accounts, the tenants (merchants)
//! and everything they own (venues, gateways, locks with price plans, enrollment codes),
//! and serves the console API that manages them; the gateway link (signing keys,
//! enrollment, MQTT bridge, sync) and the money flows build on this foundation.
//!
//! How the modules fit: [`config`] turns defaults, a TOML file and `DMR_` variables into a
//! validated [`config::Config`]; [`db`] opens SQLite or PostgreSQL through one sqlx Any
//! pool and applies the embedded migrations; [`app`] builds the router from the route
//! table in [`http::routes`], where each route names the permission ([`rbac`]) it needs and
//! the guard in [`http::guard`] enforces it. Each feature folder (`auth`, `merchants`,
//! `venues`, `gateways`, `locks`, `users`, `enrollment`, `orders`) has the same shape: `types` (rows,
//! bodies, validation), `store` (its SQL, tenant-scoped), `handlers`. Every handler returns
//! [`error::ApiError`], the one mapping to status codes and the JSON error body. [`jobs`] runs
//! periodic work under database leases. [`broker`] holds the MQTT credentials
//! and access policy, the embedded broker and the EMQX hooks. [`cli`] is what the thin `main` calls.

// The hand-written OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod db;
pub mod enrollment;
pub mod error;
pub mod firmware;
pub mod gateways;
pub mod health;
pub mod http;
pub mod jobs;
pub mod link;
pub mod locks;
pub mod merchants;
pub mod openapi;
pub mod orders;
pub mod payments;
pub mod rbac;
pub mod users;
pub mod venues;
pub mod web;

use std::sync::Arc;

pub use app::{App, build_app, run, serve};

/// What every handler can reach. Cheap to clone: everything is shared.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: db::Db,
    pub config: Arc<config::Config>,
    pub jwt: Arc<auth::jwt::JwtKeys>,
    pub metrics: Arc<http::metrics::Metrics>,
    pub limiter: Arc<http::ratelimit::RateLimiter>,
    /// The cloud's signing keys (active signer, trusted list).
    pub keys: Arc<link::keys::KeyRing>,
    /// Verifies and applies gateway messages (MQTT bridge and HTTP drain).
    pub ingest: Arc<link::ingest::Ingest>,
    pub link_metrics: Arc<link::metrics::LinkMetrics>,
    /// Turns true when the server starts shutting down, so endless responses (the live
    /// stream) end and graceful shutdown can finish.
    pub stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The broker connection (consumed by the bridge task, published on by commands).
    pub mqtt: Arc<link::bridge::MqttLink>,
    pub commands: Arc<link::commands::Commands>,
    /// MQTT credentials, the EMQX hook secret and the embedded broker's counters.
    pub broker: Arc<broker::BrokerState>,
    /// Orders, payment providers and the unlock dispatcher.
    pub orders: Arc<orders::Orders>,
}
