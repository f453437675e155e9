//! Token verification from text against a bare `ed25519-dalek` `verify_strict` over the
//! same signed bytes, side by side in one run. The goal (issue: wire-contract crate) is at
//! least 90% of the bare rate: parsing, base64, key lookup and the policy checks must cost
//! little next to the signature itself.
//!
//! Run: `cargo bench -p dmr-protocol --bench token_verify`; `scripts/bench-report.sh`
//! prints the medians and the ratio from criterion's output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dmr_protocol::keys::{Signature, SigningKey, VerifyingKey};
use dmr_protocol::token::{self, CheckTime, GatewayView, TokenClaims, TokenKind};
use uuid::Uuid;

struct View {
    keys: HashMap<u32, VerifyingKey>,
    lock: Uuid,
    uses: HashMap<Uuid, u32>,
}

impl GatewayView for View {
    fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey> {
        self.keys.get(&key_id)
    }
    fn owns_lock(&self, lock_id: &Uuid) -> bool {
        *lock_id == self.lock
    }
    fn is_revoked(&self, _: &Uuid) -> bool {
        false
    }
    fn uses(&self, token_id: &Uuid) -> u32 {
        self.uses.get(token_id).copied().unwrap_or(0)
    }
}

fn bench(c: &mut Criterion) {
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let claims = TokenClaims {
        kind: TokenKind::Order,
        key_id: 1,
        token_id: Uuid::from_u128(11),
        lock_id: Uuid::from_u128(22),
        order_id: Uuid::from_u128(33),
        not_before: 1_800_000_000,
        not_after: 1_800_000_600,
        max_uses: 1,
    };
    let token = claims.sign(&sk).unwrap();
    let text = token.to_text();
    let view = View {
        keys: HashMap::from([(1, sk.verifying_key())]),
        lock: Uuid::from_u128(22),
        uses: HashMap::new(),
    };
    let now = CheckTime {
        now_s: 1_800_000_100,
        skew_s: 120,
    };

    // The bare baseline: exactly the bytes the token signature covers, key and signature
    // already parsed.
    let bytes = token.as_bytes();
    let mut msg = b"DMR-UNLOCK-TOKEN/1\0".to_vec();
    msg.extend_from_slice(&bytes[..71]);
    let sig = Signature::from_bytes(&bytes[71..].try_into().unwrap());
    let vk = sk.verifying_key();

    let mut g = c.benchmark_group("token_verify");
    g.bench_function("bare_verify_strict", |b| {
        b.iter(|| {
            black_box(&vk)
                .verify_strict(black_box(&msg), black_box(&sig))
                .unwrap()
        })
    });
    g.bench_function("verify_text", |b| {
        b.iter(|| token::verify_text(black_box(&text), &view, now).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
