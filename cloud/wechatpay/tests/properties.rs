#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests: parsers never panic on arbitrary input, amounts round-trip through the
//! bill's yuan notation, and any single-bit change to a signed body or an encrypted resource
//! is refused.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dmr_wechatpay::aead::ApiV3Key;
use dmr_wechatpay::bill::parse_yuan_to_fen;
use dmr_wechatpay::model::parse_rfc3339_unix_ms;
use dmr_wechatpay::{Error, PlatformKeys, SignatureHeaders, parse_trade_bill};
use proptest::prelude::*;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::Value;
use sha2::Sha256;
use std::sync::LazyLock;
use std::time::Duration;

static VECTORS: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("vectors/vectors.json")).unwrap());

fn vk(name: &str) -> &'static str {
    VECTORS["keys"][name].as_str().unwrap()
}

static SIGNER: LazyLock<SigningKey<Sha256>> = LazyLock::new(|| {
    SigningKey::new(RsaPrivateKey::from_pkcs8_pem(vk("wechatpay_private_key_pem")).unwrap())
});

static KEYS: LazyLock<PlatformKeys> = LazyLock::new(|| {
    let mut keys = PlatformKeys::new();
    keys.add_public_key_pem(
        vk("wechatpay_public_key_id"),
        vk("wechatpay_public_key_pem"),
    )
    .unwrap();
    keys
});

fn yuan_text(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

proptest! {
    #[test]
    fn fen_round_trips_through_yuan(fen in -1_000_000_000_000_000i64..1_000_000_000_000_000i64) {
        prop_assert_eq!(parse_yuan_to_fen(&yuan_text(fen)), Some(fen));
    }

    #[test]
    fn parsers_never_panic(text in "\\PC{0,200}") {
        let _ = parse_yuan_to_fen(&text);
        let _ = parse_rfc3339_unix_ms("t", &text);
        let _ = parse_trade_bill(&text);
    }

    #[test]
    fn bill_like_garbage_never_panics(lines in proptest::collection::vec("[`,0-9.\\-a-z总交易单数]{0,40}", 0..6)) {
        let header = "交易时间,公众账号ID,商户号,微信订单号,商户订单号,用户标识,交易类型,交易状态,应结订单金额,微信退款单号,商户退款单号,退款金额,退款状态,手续费,订单金额,申请退款金额";
        let text = std::iter::once(header.to_owned()).chain(lines).collect::<Vec<_>>().join("\n");
        let _ = parse_trade_bill(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_bit_flip_in_a_signed_body_is_refused(body in proptest::collection::vec(any::<u8>(), 1..300), bit in any::<prop::sample::Index>()) {
        let ts = "1764150000";
        let nonce = "n0nce";
        let mut message = format!("{ts}\n{nonce}\n").into_bytes();
        message.extend_from_slice(&body);
        message.push(b'\n');
        let headers = SignatureHeaders {
            serial: vk("wechatpay_public_key_id").to_owned(),
            timestamp: ts.to_owned(),
            nonce: nonce.to_owned(),
            signature: STANDARD.encode(SIGNER.sign(&message).to_bytes()),
        };
        let skew = Duration::from_secs(300);
        prop_assert!(KEYS.verify(&headers, &body, 1_764_150_000, skew).is_ok());
        let mut tampered = body.clone();
        let i = bit.index(tampered.len() * 8);
        tampered[i / 8] ^= 1 << (i % 8);
        let refused = matches!(KEYS.verify(&headers, &tampered, 1_764_150_000, skew), Err(Error::BadSignature { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn any_bit_flip_in_an_encrypted_resource_is_refused(
        plaintext in proptest::collection::vec(any::<u8>(), 0..200),
        aad in "[a-z]{0,16}",
        nonce in "[A-Za-z0-9]{12}",
        bit in any::<prop::sample::Index>(),
    ) {
        let key = vk("api_v3_key");
        let cipher = Aes256Gcm::new_from_slice(key.as_bytes()).unwrap();
        let ct = cipher
            .encrypt(Nonce::from_slice(nonce.as_bytes()), Payload { msg: &plaintext, aad: aad.as_bytes() })
            .unwrap();
        let v3 = ApiV3Key::new(key).unwrap();
        prop_assert_eq!(v3.decrypt(nonce.as_bytes(), aad.as_bytes(), &STANDARD.encode(&ct)).unwrap(), plaintext);
        let mut tampered = ct.clone();
        let i = bit.index(tampered.len() * 8);
        tampered[i / 8] ^= 1 << (i % 8);
        let refused = matches!(v3.decrypt(nonce.as_bytes(), aad.as_bytes(), &STANDARD.encode(&tampered)), Err(Error::Decrypt));
        prop_assert!(refused);
    }
}
