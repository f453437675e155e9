//! The token-verification ratio measured robustly on a shared, noisy machine: the bare
//! `verify_strict` and `verify_text` run in alternating batches, so a burst of load from
//! elsewhere hits both sides alike; the figure reported is the ratio of the two medians of
//! per-operation batch times. Criterion's `token_verify` bench gives the usual report.
//!
//! Run: `cargo bench -p dmr-protocol --bench token_verify_interleaved`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use dmr_protocol::keys::{Signature, SigningKey, VerifyingKey};
use dmr_protocol::token::{self, CheckTime, GatewayView, TokenClaims, TokenKind};
use uuid::Uuid;

struct View {
    keys: HashMap<u32, VerifyingKey>,
    lock: Uuid,
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
    fn uses(&self, _: &Uuid) -> u32 {
        0
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is configurable on purpose.
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
    };
    let now = CheckTime {
        now_s: 1_800_000_100,
        skew_s: 120,
    };
    let bytes = token.as_bytes();
    let mut msg = b"DMR-UNLOCK-TOKEN/1\0".to_vec();
    msg.extend_from_slice(&bytes[..71]);
    let sig = Signature::from_bytes(&bytes[71..].try_into().unwrap());
    let vk = sk.verifying_key();

    const BATCH: u32 = 200;
    const ROUNDS: usize = 100;
    let (mut bare, mut ours) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS + 5 {
        let t = Instant::now();
        for _ in 0..BATCH {
            black_box(&vk)
                .verify_strict(black_box(&msg), black_box(&sig))
                .unwrap();
        }
        let b = t.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH);
        let t = Instant::now();
        for _ in 0..BATCH {
            token::verify_text(black_box(&text), &view, now).unwrap();
        }
        let o = t.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH);
        if round >= 5 {
            // The first rounds warm caches and CPU frequency.
            bare.push(b);
            ours.push(o);
        }
    }
    let (mb, mo) = (median(&mut bare), median(&mut ours));
    println!(
        "interleaved {ROUNDS} x {BATCH}: bare verify_strict median {mb:.2} us/op, \
         verify_text median {mo:.2} us/op, rate ratio {:.3} (goal >= 0.90)",
        mb / mo
    );
}
