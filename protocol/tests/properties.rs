//! Property tests for the codecs: encode/decode round trips, any single flipped bit in a
//! signed token, message or firmware image is refused, and no decoder panics on arbitrary
//! input. Case count: proptest's default (256), or `PROPTEST_CASES` (the ARM run under
//! qemu uses fewer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use dmr_protocol::firmware;
use dmr_protocol::jws::{self, Kid};
use dmr_protocol::keys::{SigningKey, VerifyingKey};
use dmr_protocol::message::{Envelope, GatewayState, Message};
use dmr_protocol::modbus::{self, Request, Response};
use dmr_protocol::registers::{self, FwVersion, HARDWARE_LOCK};
use dmr_protocol::token::{self, CheckTime, GatewayView, TokenClaims, TokenKind, UnlockToken};
use dmr_protocol::topic;
use proptest::prelude::*;
use uuid::Uuid;

fn signer() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[42u8; 32]))
}

struct AnyLock(VerifyingKey);

impl GatewayView for AnyLock {
    fn trusted_key(&self, key_id: u32) -> Option<&VerifyingKey> {
        (key_id == 3).then_some(&self.0)
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

prop_compose! {
    fn claims()(
        maintenance in any::<bool>(),
        ids in any::<(u128, u128, u128)>(),
        nb in 0u64..u64::MAX / 2,
        len in 1u64..1_000_000,
        max_uses in 1u8..=255,
    ) -> TokenClaims {
        TokenClaims {
            kind: if maintenance { TokenKind::Maintenance } else { TokenKind::Order },
            key_id: 3,
            token_id: Uuid::from_u128(ids.0),
            lock_id: Uuid::from_u128(ids.1),
            order_id: if maintenance { Uuid::nil() } else { Uuid::from_u128(ids.2) },
            not_before: nb,
            not_after: nb + len,
            max_uses,
        }
    }
}

proptest! {

    #[test]
    fn token_round_trips(c in claims()) {
        let t = c.sign(signer()).unwrap();
        let back = UnlockToken::from_text(&t.to_text()).unwrap();
        prop_assert_eq!(back.claims(), &c);
        prop_assert_eq!(UnlockToken::from_bytes(t.as_bytes()).unwrap(), t.clone());
        let view = AnyLock(signer().verifying_key());
        let now = CheckTime { now_s: c.not_before, skew_s: 0 };
        prop_assert!(token::verify(&back, &view, now).is_ok());
    }

    #[test]
    fn any_flipped_token_bit_is_refused(c in claims(), bit in 0usize..token::TOKEN_LEN * 8) {
        let t = c.sign(signer()).unwrap();
        let mut b = *t.as_bytes();
        b[bit / 8] ^= 1 << (bit % 8);
        let view = AnyLock(signer().verifying_key());
        let now = CheckTime { now_s: c.not_before, skew_s: 0 };
        let refused = match UnlockToken::from_bytes(&b) {
            Err(_) => true,
            Ok(t2) => token::verify(&t2, &view, now).is_err(),
        };
        prop_assert!(refused, "bit {} flipped was accepted", bit);
    }

    #[test]
    fn token_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), text in ".{0,200}") {
        let _ = UnlockToken::from_bytes(&bytes);
        let _ = UnlockToken::from_text(&text);
        let _ = UnlockToken::from_text(&format!("DMR1.{text}"));
        let _ = token::ShortCode::parse(&text);
    }

    #[test]
    fn any_flipped_jws_byte_is_refused(online in any::<bool>(), pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let gw = Uuid::from_u128(77);
        let env = Envelope::new(Uuid::from_u128(1), gw, 5, Message::State(GatewayState { online }));
        let compact = env.sign(Kid::Gateway(gw), signer());
        let mut bytes = compact.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        if let Ok(s) = String::from_utf8(bytes) {
            let vk = signer().verifying_key();
            // Either the structure, the signature or the payload check refuses it; the only
            // accepted string would be byte-identical, which `delta != 0` rules out -- except
            // base64url's unused trailing bits, which decode to the same bytes, so compare
            // what was verified.
            if let Ok((_, payload)) = jws::verify(&s, |_| Some(&vk)) {
                let original = jws::verify(&compact, |_| Some(&vk)).unwrap().1;
                prop_assert_eq!(payload, original);
            }
        }
    }

    #[test]
    fn jws_and_message_parsers_never_panic(text in ".{0,400}", raw in proptest::collection::vec(any::<u8>(), 0..400)) {
        let vk = signer().verifying_key();
        let _ = jws::verify(&text, |_| Some(&vk));
        let _ = jws::parse(&text);
        let _ = Envelope::from_json(&raw);
        let _ = Envelope::from_json(text.as_bytes());
        let _ = topic::parse(&text);
        let _ = text.parse::<Kid>();
    }

    #[test]
    fn firmware_bit_flips_are_refused(payload in proptest::collection::vec(any::<u8>(), 1..600), bit in any::<prop::sample::Index>()) {
        let v = FwVersion { major: 2, minor: 0, patch: 1 };
        let image = firmware::build(HARDWARE_LOCK, v, &payload, 3, signer()).unwrap();
        let keys = [(3u32, signer().verifying_key())];
        prop_assert!(firmware::verify(&image, &keys, HARDWARE_LOCK).is_ok());
        let mut bad = image.clone();
        let b = bit.index(bad.len() * 8);
        bad[b / 8] ^= 1 << (b % 8);
        prop_assert!(firmware::verify(&bad, &keys, HARDWARE_LOCK).is_err());
    }

    #[test]
    fn firmware_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let keys = [(1u32, signer().verifying_key())];
        let _ = firmware::parse_header(&bytes);
        let _ = firmware::verify(&bytes, &keys, HARDWARE_LOCK);
    }

    #[test]
    fn modbus_request_round_trip(unit in 1u8..=247, addr in any::<u16>(), count in 1u16..=125, values in proptest::collection::vec(any::<u16>(), 1..=123), on in any::<bool>()) {
        for r in [
            Request::ReadHoldingRegisters { addr, count },
            Request::ReadCoils { addr, count },
            Request::WriteSingleCoil { addr, value: on },
            Request::WriteMultipleRegisters { addr, values: values.clone() },
        ] {
            let frame = modbus::rtu::encode(unit, &r.encode_pdu());
            prop_assert_eq!(modbus::rtu::request_len(&frame).unwrap(), Some(frame.len()));
            let (u, pdu) = modbus::rtu::decode(&frame).unwrap();
            prop_assert_eq!(u, unit);
            prop_assert_eq!(Request::decode_pdu(pdu).unwrap(), r);
        }
    }

    #[test]
    fn modbus_response_round_trip(regs in proptest::collection::vec(any::<u16>(), 1..=125), bits in proptest::collection::vec(any::<bool>(), 1..=2000)) {
        let rq = Request::ReadInputRegisters { addr: 0, count: regs.len() as u16 };
        let pdu = Response::Registers(regs.clone()).encode_pdu(rq.function());
        prop_assert_eq!(Response::decode_pdu(&pdu, &rq).unwrap(), Response::Registers(regs));
        let rq = Request::ReadDiscreteInputs { addr: 0, count: bits.len() as u16 };
        let pdu = Response::Bits(bits.clone()).encode_pdu(rq.function());
        prop_assert_eq!(Response::decode_pdu(&pdu, &rq).unwrap(), Response::Bits(bits));
    }

    #[test]
    fn modbus_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in 0u16..3000) {
        let _ = modbus::rtu::decode(&bytes);
        let _ = modbus::rtu::request_len(&bytes);
        let _ = modbus::rtu::response_len(&bytes);
        let _ = modbus::tcp::decode_header(&bytes);
        let _ = Request::decode_pdu(&bytes);
        for rq in [
            Request::ReadCoils { addr: 0, count },
            Request::ReadHoldingRegisters { addr: 0, count },
            Request::WriteMultipleRegisters { addr: 0, values: vec![0; usize::from(count % 130)] },
        ] {
            let _ = Response::decode_pdu(&bytes, &rq);
        }
    }

    #[test]
    fn crc_detects_any_single_bit_error(bytes in proptest::collection::vec(any::<u8>(), 2..100), bit in any::<prop::sample::Index>()) {
        let frame = modbus::rtu::encode(1, &bytes);
        let mut bad = frame.clone();
        let b = bit.index(bad.len() * 8);
        bad[b / 8] ^= 1 << (b % 8);
        prop_assert!(modbus::rtu::decode(&bad).is_err());
    }

    #[test]
    fn register_codecs(offset in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 1..=200), regs in proptest::collection::vec(any::<u16>(), 0..120)) {
        let packed = registers::pack_chunk(offset, &data).unwrap();
        prop_assert_eq!(registers::unpack_chunk(&packed).unwrap(), (offset, data));
        let _ = registers::unpack_chunk(&regs);
        let _ = registers::Identity::from_regs(&regs);
        let _ = registers::FwStatus::from_regs(&regs);
        let _ = registers::Settings::from_regs(&regs);
        let _ = registers::decode_ascii(&regs);
        prop_assert_eq!(registers::regs_to_u32(registers::u32_to_regs(offset)[0], registers::u32_to_regs(offset)[1]), offset);
    }
}
