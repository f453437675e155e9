//! The HTTP layer shared by every feature: the route table (which also decides who may call
//! what), extractors that turn bad input into API errors, list helpers, rate limiting and
//! request metrics.

pub mod extract;
pub mod guard;
pub mod list;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
