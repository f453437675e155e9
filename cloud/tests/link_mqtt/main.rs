//! The cloud's MQTT side against a real Mosquitto: the bridge consumes signed gateway
//! messages (heartbeats mark locks online, events are applied once however often and by
//! whichever path they arrive), refuses forged, misplaced, replayed and tampered messages
//! without changing anything (and counts them), carries a console unlock to a gateway and
//! its ack back, and follows a gateway's Last Will. Every scenario runs on SQLite and, when
//! DMR_TEST_DATABASE_URL is set, on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../api/common.rs"]
#[allow(dead_code)]
mod common;
mod mqtt;
#[path = "../support/ports.rs"]
mod ports;

mod scenarios;

on_every_backend!(
    heartbeats_events_rejections_commands_and_last_will,
    liveness_marks_silent_locks_and_gateways_offline,
);
