#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests: the real app, in-process, on a free port, against SQLite and (when
//! DMR_TEST_DATABASE_URL is set) PostgreSQL. One binary so the app links once.

mod auth;
mod broker;
mod cli;
mod common;
mod errors;
mod firmware;
mod leases;
mod link;
mod link_support;
mod openapi;
mod order_batches;
mod order_fixtures;
mod order_fold;
mod orders;
mod rbac;
mod resources;
mod web;
mod wechat_oauth;
mod wechatpay;
