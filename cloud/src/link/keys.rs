//! TEMPORARY STAND-IN for A1's key ring (link-core branch), so the MQTT side compiles
//! before that branch is merged. Replaced wholesale by A1's file at merge time.
#![allow(dead_code)]

use dmr_protocol::jws::Kid;
use dmr_protocol::keys::SigningKey;
use dmr_protocol::message::Envelope;

use crate::error::ApiError;

#[derive(Debug)]
pub struct KeyRing {
    key: SigningKey,
}

pub struct CloudSigner {
    pub key_id: u32,
    pub key: SigningKey,
}

impl CloudSigner {
    pub fn sign_token(
        &self,
        claims: dmr_protocol::token::TokenClaims,
    ) -> Result<dmr_protocol::token::UnlockToken, dmr_protocol::token::FormatError> {
        claims.sign(&self.key)
    }
    pub fn sign_message(&self, env: &Envelope) -> String {
        env.sign(Kid::Cloud(self.key_id), &self.key)
    }
}

impl KeyRing {
    pub fn new(key: SigningKey) -> Self {
        KeyRing { key }
    }
    pub async fn signer(&self) -> Result<CloudSigner, ApiError> {
        Ok(CloudSigner {
            key_id: 1,
            key: self.key.clone(),
        })
    }
}
