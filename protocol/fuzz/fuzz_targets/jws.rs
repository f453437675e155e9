//! JWS and message parsing must never panic, whatever a broker or an HTTP client delivers.
#![no_main]

use dmr_protocol::jws;
use dmr_protocol::keys::SigningKey;
use dmr_protocol::message::{self, Envelope, Expect};
use dmr_protocol::topic;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let vk = SigningKey::from_bytes(&[2u8; 32]).verifying_key();
    let _ = Envelope::from_json(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jws::parse(text);
        let _ = message::open(text, |_| Some(&vk), Expect { gw: Uuid::nil(), now_ms: 0 });
        let _ = topic::parse(text);
    }
});
