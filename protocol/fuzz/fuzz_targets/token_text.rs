//! Token parsing and verification must never panic, whatever a scanner or a LAN client sends.
#![no_main]

use dmr_protocol::keys::{SigningKey, VerifyingKey};
use dmr_protocol::token::{self, CheckTime, GatewayView, ShortCode, UnlockToken};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

struct View(VerifyingKey);

impl GatewayView for View {
    fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey> {
        (key_id == 1).then_some(&self.0)
    }
    fn owns_lock(&self, _: &Uuid) -> bool {
        true
    }
    fn is_revoked(&self, _: &Uuid) -> bool {
        false
    }
    fn uses(&self, _: &Uuid) -> u32 {
        0
    }
}

fuzz_target!(|data: &[u8]| {
    let view = View(SigningKey::from_bytes(&[1u8; 32]).verifying_key());
    let now = CheckTime { now_s: 1_800_000_000, skew_s: 120 };
    if let Ok(t) = UnlockToken::from_bytes(data) {
        let _ = token::verify(&t, &view, now);
        let _ = t.short_code();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::verify_text(text, &view, now);
        let _ = ShortCode::parse(text);
    }
});
