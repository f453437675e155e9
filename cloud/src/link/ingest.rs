//! TEMPORARY STAND-IN for A1's ingest (link-core branch): the contract's signature only.
#![allow(dead_code)]

use uuid::Uuid;

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Mqtt,
    Http,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    BadSignature,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        "bad_signature"
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Rejected(RejectReason),
}

#[derive(Debug, Default)]
pub struct Ingest;

impl Ingest {
    pub async fn submit(
        &self,
        _gw: Uuid,
        _via: Via,
        raw: &[&str],
    ) -> Result<Vec<Outcome>, ApiError> {
        Ok(raw.iter().map(|_| Outcome::Applied).collect())
    }
}
