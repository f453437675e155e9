#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Conformance against vectors made by an independent implementation (Python `cryptography`,
//! see `vectors/generate.py`): same request signatures, acceptance of its response and
//! notification signatures with both key kinds, same decrypted plaintext, and refusal of
//! every tampered variant.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dmr_wechatpay::aead::ApiV3Key;
use dmr_wechatpay::bill::{BillLocation, verify_hash};
use dmr_wechatpay::notify::decrypt_resource;
use dmr_wechatpay::sign::request_message;
use dmr_wechatpay::{
    Error, MerchantSigner, Notification, NotificationEnvelope, NotificationVerifier, PlatformKeys,
    RefundStatus, SignatureHeaders, TradeState, parse_trade_bill,
};
use http::{HeaderMap, HeaderValue};
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::Value;
use sha2::Sha256;
use std::time::Duration;

const SKEW: Duration = Duration::from_secs(300);

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/vectors.json")).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing"))
}

fn signer(v: &Value) -> MerchantSigner {
    let k = &v["keys"];
    MerchantSigner::from_pem(
        s(k, "mchid"),
        s(k, "merchant_serial_no"),
        s(k, "merchant_private_key_pem"),
    )
    .unwrap()
}

fn keys(v: &Value, cert: bool, public_key: bool) -> PlatformKeys {
    let k = &v["keys"];
    let mut keys = PlatformKeys::new();
    if cert {
        let serial = keys
            .add_certificate_pem(s(k, "platform_certificate_pem"))
            .unwrap();
        assert_eq!(serial, s(k, "platform_serial_no"));
    }
    if public_key {
        keys.add_public_key_pem(
            s(k, "wechatpay_public_key_id"),
            s(k, "wechatpay_public_key_pem"),
        )
        .unwrap();
    }
    keys
}

fn response_headers(r: &Value) -> SignatureHeaders {
    SignatureHeaders {
        serial: s(r, "serial").to_owned(),
        timestamp: s(r, "timestamp").to_owned(),
        nonce: s(r, "nonce").to_owned(),
        signature: s(r, "signature").to_owned(),
    }
}

fn ts(r: &Value) -> i64 {
    s(r, "timestamp").parse().unwrap()
}

fn header_map(h: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in h.as_object().unwrap() {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
        );
    }
    map
}

fn flip_bit(bytes: &mut [u8], index: usize) {
    bytes[index] ^= 0x01;
}

#[test]
fn request_signatures_equal_python() {
    let v = vectors();
    let signer = signer(&v);
    let cases = v["requests"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for r in cases {
        let timestamp = r["timestamp"].as_i64().unwrap();
        let msg = request_message(
            s(r, "method"),
            s(r, "url"),
            timestamp,
            s(r, "nonce"),
            s(r, "body"),
        );
        assert_eq!(msg, s(r, "message"));
        assert_eq!(
            signer.sign(msg.as_bytes()).unwrap(),
            s(r, "signature"),
            "{}",
            s(r, "url")
        );
        let auth = signer
            .authorization(
                s(r, "method"),
                s(r, "url"),
                timestamp,
                s(r, "nonce"),
                s(r, "body"),
            )
            .unwrap();
        assert_eq!(auth, s(r, "authorization"));
    }
}

#[test]
fn jsapi_pay_sign_equals_python() {
    let v = vectors();
    let j = &v["jsapi"];
    let prepay_id = s(j, "package").strip_prefix("prepay_id=").unwrap();
    let params = signer(&v)
        .jsapi_params(
            s(j, "app_id"),
            prepay_id,
            s(j, "time_stamp").parse().unwrap(),
            s(j, "nonce_str"),
        )
        .unwrap();
    assert_eq!(params.pay_sign, s(j, "pay_sign"));
    assert_eq!(params.package, s(j, "package"));
    assert_eq!(params.sign_type, "RSA");
    let json = serde_json::to_value(&params).unwrap();
    for key in [
        "appId",
        "timeStamp",
        "nonceStr",
        "package",
        "signType",
        "paySign",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
}

#[test]
fn python_response_signatures_verify_with_certificate_and_public_key() {
    let v = vectors();
    let both = keys(&v, true, true);
    let cert_only = keys(&v, true, false);
    let pk_only = keys(&v, false, true);
    let mut seen = (0, 0);
    for r in v["responses"].as_array().unwrap() {
        let h = response_headers(r);
        let body = s(r, "body").as_bytes();
        both.verify(&h, body, ts(r), SKEW).unwrap();
        if s(r, "signer") == "certificate" {
            seen.0 += 1;
            cert_only.verify(&h, body, ts(r), SKEW).unwrap();
            assert!(matches!(
                pk_only.verify(&h, body, ts(r), SKEW),
                Err(Error::UnknownSerial(_))
            ));
        } else {
            seen.1 += 1;
            pk_only.verify(&h, body, ts(r), SKEW).unwrap();
            assert!(matches!(
                cert_only.verify(&h, body, ts(r), SKEW),
                Err(Error::UnknownSerial(_))
            ));
        }
    }
    assert!(
        seen.0 >= 1 && seen.1 >= 1,
        "both key kinds must be exercised: {seen:?}"
    );
}

#[test]
fn serial_comparison_ignores_case_and_leading_zeros() {
    let v = vectors();
    let keys = keys(&v, true, false);
    let r = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| s(r, "signer") == "certificate")
        .unwrap();
    let mut h = response_headers(r);
    h.serial = format!("00{}", h.serial.to_ascii_lowercase());
    keys.verify(&h, s(r, "body").as_bytes(), ts(r), SKEW)
        .unwrap();
}

#[test]
fn every_response_tamper_is_refused() {
    let v = vectors();
    let keys = keys(&v, true, true);
    for r in v["responses"].as_array().unwrap() {
        let h = response_headers(r);
        let body = s(r, "body").as_bytes().to_vec();
        let now = ts(r);

        // Body: one bit flipped anywhere, or a byte appended (covers the empty 204 body).
        for i in 0..body.len() {
            let mut b = body.clone();
            flip_bit(&mut b, i);
            assert!(
                matches!(
                    keys.verify(&h, &b, now, SKEW),
                    Err(Error::BadSignature { .. })
                ),
                "flip {i}"
            );
        }
        let mut longer = body.clone();
        longer.push(b' ');
        assert!(matches!(
            keys.verify(&h, &longer, now, SKEW),
            Err(Error::BadSignature { .. })
        ));

        // Signature bits.
        let mut raw = STANDARD.decode(&h.signature).unwrap();
        flip_bit(&mut raw, 100);
        let bad_sig = SignatureHeaders {
            signature: STANDARD.encode(&raw),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&bad_sig, &body, now, SKEW),
            Err(Error::BadSignature { .. })
        ));

        // Nonce and timestamp are signed too.
        let bad_nonce = SignatureHeaders {
            nonce: format!("{}x", h.nonce),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&bad_nonce, &body, now, SKEW),
            Err(Error::BadSignature { .. })
        ));
        let shifted = SignatureHeaders {
            timestamp: (now + 1).to_string(),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&shifted, &body, now, SKEW),
            Err(Error::BadSignature { .. })
        ));

        // Wrong serial: the other configured key, or an unknown one.
        let other = if h.serial.starts_with("PUB_KEY_ID_") {
            s(&v["keys"], "platform_serial_no").to_owned()
        } else {
            s(&v["keys"], "wechatpay_public_key_id").to_owned()
        };
        let swapped = SignatureHeaders {
            serial: other,
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&swapped, &body, now, SKEW),
            Err(Error::BadSignature { .. })
        ));
        let unknown = SignatureHeaders {
            serial: "PUB_KEY_ID_0000".into(),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&unknown, &body, now, SKEW),
            Err(Error::UnknownSerial(_))
        ));
        let unknown_cert = SignatureHeaders {
            serial: "ABCDEF".into(),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&unknown_cert, &body, now, SKEW),
            Err(Error::UnknownSerial(_))
        ));

        // Stale timestamps, both directions; the boundary itself is accepted.
        keys.verify(&h, &body, now + 300, SKEW).unwrap();
        keys.verify(&h, &body, now - 300, SKEW).unwrap();
        assert!(matches!(
            keys.verify(&h, &body, now + 301, SKEW),
            Err(Error::StaleTimestamp { .. })
        ));
        assert!(matches!(
            keys.verify(&h, &body, now - 301, SKEW),
            Err(Error::StaleTimestamp { .. })
        ));
        let garbage_ts = SignatureHeaders {
            timestamp: "soon".into(),
            ..h.clone()
        };
        assert!(matches!(
            keys.verify(&garbage_ts, &body, now, SKEW),
            Err(Error::InvalidHeader {
                name: "Wechatpay-Timestamp",
                ..
            })
        ));

        // Signature-test probe.
        let probe = SignatureHeaders {
            signature: format!("WECHATPAY/SIGNTEST/{}", h.signature),
            ..h.clone()
        };
        let err = keys.verify(&probe, &body, now, SKEW).unwrap_err();
        assert!(matches!(err, Error::SignatureProbe));
        assert!(err.is_authentication_failure());
    }
}

#[test]
fn certificate_outside_validity_is_refused() {
    let v = vectors();
    let keys = keys(&v, true, false);
    let r = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| s(r, "signer") == "certificate")
        .unwrap();
    // 2037: after the test certificate's notAfter (2036-01-01); timestamp moved along with it
    // would break the signature, so only the validity check can fail first via the clock.
    let far = 2_114_380_800;
    let h = SignatureHeaders {
        timestamp: far.to_string(),
        ..response_headers(r)
    };
    assert!(matches!(
        keys.verify(&h, s(r, "body").as_bytes(), far, SKEW),
        Err(Error::CertificateNotValid { .. })
    ));
}

fn notification_verifier(v: &Value) -> NotificationVerifier {
    NotificationVerifier::new(
        keys(v, true, true),
        ApiV3Key::new(s(&v["keys"], "api_v3_key")).unwrap(),
        SKEW,
    )
}

#[test]
fn python_notifications_verify_decrypt_and_parse() {
    let v = vectors();
    let verifier = notification_verifier(&v);
    let key = ApiV3Key::new(s(&v["keys"], "api_v3_key")).unwrap();
    for n in v["notifications"].as_array().unwrap() {
        let headers = header_map(&n["headers"]);
        let now: i64 = s(&n["headers"], "Wechatpay-Timestamp").parse().unwrap();
        let body = s(n, "body").as_bytes();
        let envelope: NotificationEnvelope = serde_json::from_slice(body).unwrap();
        let plaintext = decrypt_resource(&key, &envelope.resource).unwrap();
        assert_eq!(String::from_utf8(plaintext).unwrap(), s(n, "plaintext"));
        let expected: Value = serde_json::from_str(s(n, "plaintext")).unwrap();
        match verifier.parse(&headers, body, now).unwrap() {
            Notification::Transaction {
                id,
                event_type,
                transaction: t,
            } => {
                assert_eq!(event_type, "TRANSACTION.SUCCESS");
                assert_eq!(id, envelope.id);
                assert_eq!(t.out_trade_no, s(&expected, "out_trade_no"));
                assert_eq!(
                    t.transaction_id.as_deref(),
                    Some(s(&expected, "transaction_id"))
                );
                assert_eq!(t.trade_state, TradeState::Success);
                assert_eq!(t.mchid, s(&expected, "mchid"));
                assert_eq!(t.appid, s(&expected, "appid"));
                assert_eq!(
                    t.payer.as_ref().unwrap().openid,
                    s(&expected["payer"], "openid")
                );
                let amount = t.amount.clone().unwrap();
                assert_eq!(amount.total, expected["amount"]["total"].as_i64().unwrap());
                assert_eq!(
                    amount.payer_total,
                    expected["amount"]["payer_total"].as_i64()
                );
                assert_eq!(
                    t.success_time.as_deref(),
                    Some(s(&expected, "success_time"))
                );
                assert_eq!(t.success_time_unix_ms().unwrap(), Some(1_795_660_496_000));
            }
            Notification::Refund {
                event_type,
                refund: r,
                ..
            } => {
                assert_eq!(event_type, "REFUND.SUCCESS");
                assert_eq!(r.out_refund_no, s(&expected, "out_refund_no"));
                assert_eq!(r.refund_id, s(&expected, "refund_id"));
                assert_eq!(r.refund_status, RefundStatus::Success);
                assert_eq!(
                    r.amount.refund,
                    expected["amount"]["refund"].as_i64().unwrap()
                );
                assert_eq!(
                    r.amount.total,
                    expected["amount"]["total"].as_i64().unwrap()
                );
            }
            other => panic!("unexpected notification {other:?}"),
        }
    }
}

#[test]
fn notification_with_tampered_body_or_headers_is_refused() {
    let v = vectors();
    let verifier = notification_verifier(&v);
    for n in v["notifications"].as_array().unwrap() {
        let headers = header_map(&n["headers"]);
        let now: i64 = s(&n["headers"], "Wechatpay-Timestamp").parse().unwrap();
        let body = s(n, "body").as_bytes().to_vec();

        let mut b = body.clone();
        flip_bit(&mut b, body.len() / 2);
        assert!(matches!(
            verifier.parse(&headers, &b, now),
            Err(Error::BadSignature { .. })
        ));

        for name in [
            "Wechatpay-Serial",
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
        ] {
            let mut h = headers.clone();
            h.remove(name);
            let err = verifier.parse(&h, &body, now).unwrap_err();
            assert!(
                matches!(err, Error::MissingHeader(n) if n == name),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name));
        }

        let mut probe = headers.clone();
        probe.insert(
            "Wechatpay-Signature",
            HeaderValue::from_static("WECHATPAY/SIGNTEST/aGVsbG8="),
        );
        assert!(matches!(
            verifier.parse(&probe, &body, now),
            Err(Error::SignatureProbe)
        ));

        assert!(matches!(
            verifier.parse(&headers, &body, now + 301),
            Err(Error::StaleTimestamp { .. })
        ));

        let mut wrong_serial = headers.clone();
        wrong_serial.insert(
            "Wechatpay-Serial",
            HeaderValue::from_static("PUB_KEY_ID_0199999999"),
        );
        assert!(matches!(
            verifier.parse(&wrong_serial, &body, now),
            Err(Error::UnknownSerial(_))
        ));
    }
}

/// Re-signs a modified envelope with the test platform key, so that only decryption can catch
/// the change.
fn resigned(v: &Value, envelope: &Value, timestamp: i64) -> (HeaderMap, Vec<u8>) {
    let body = serde_json::to_vec(envelope).unwrap();
    let key = RsaPrivateKey::from_pkcs8_pem(s(&v["keys"], "wechatpay_private_key_pem")).unwrap();
    let nonce = "0123456789abcdef";
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(&body);
    message.push(b'\n');
    let sig = SigningKey::<Sha256>::new(key).sign(&message);
    let mut h = HeaderMap::new();
    h.insert(
        "Wechatpay-Serial",
        HeaderValue::from_str(s(&v["keys"], "wechatpay_public_key_id")).unwrap(),
    );
    h.insert(
        "Wechatpay-Timestamp",
        HeaderValue::from_str(&timestamp.to_string()).unwrap(),
    );
    h.insert("Wechatpay-Nonce", HeaderValue::from_static(nonce));
    h.insert(
        "Wechatpay-Signature",
        HeaderValue::from_str(&STANDARD.encode(sig.to_bytes())).unwrap(),
    );
    (h, body)
}

#[test]
fn validly_signed_notification_with_tampered_resource_fails_to_decrypt() {
    let v = vectors();
    let verifier = notification_verifier(&v);
    let now = v["now"].as_i64().unwrap();
    let n = &v["notifications"][0];
    let original: Value = serde_json::from_str(s(n, "body")).unwrap();

    // Unmodified but re-signed: accepted (proves the helper signs correctly).
    let (h, body) = resigned(&v, &original, now);
    assert!(matches!(
        verifier.parse(&h, &body, now),
        Ok(Notification::Transaction { .. })
    ));

    let ct = STANDARD
        .decode(s(&original["resource"], "ciphertext"))
        .unwrap();
    let mut tampered_variants = Vec::new();
    let mut body_flip = ct.clone();
    flip_bit(&mut body_flip, 0);
    let mut tag_flip = ct.clone();
    let last = tag_flip.len() - 1;
    flip_bit(&mut tag_flip, last);
    for bytes in [body_flip, tag_flip] {
        let mut e = original.clone();
        e["resource"]["ciphertext"] = Value::String(STANDARD.encode(bytes));
        tampered_variants.push(("ciphertext", e));
    }
    let mut nonce = s(&original["resource"], "nonce").as_bytes().to_vec();
    flip_bit(&mut nonce, 3);
    let mut e = original.clone();
    e["resource"]["nonce"] = Value::String(String::from_utf8(nonce).unwrap());
    tampered_variants.push(("nonce", e));
    let mut e = original.clone();
    e["resource"]["associated_data"] = Value::String("transactioN".into());
    tampered_variants.push(("associated_data", e));

    for (what, envelope) in tampered_variants {
        let (h, body) = resigned(&v, &envelope, now);
        let err = verifier.parse(&h, &body, now).unwrap_err();
        assert!(matches!(err, Error::Decrypt), "{what}: {err}");
    }

    let mut e = original.clone();
    e["resource"]["algorithm"] = Value::String("AEAD_SM4_GCM".into());
    let (h, body) = resigned(&v, &e, now);
    assert!(matches!(
        verifier.parse(&h, &body, now),
        Err(Error::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn python_aead_vectors_decrypt_and_every_tamper_fails() {
    let v = vectors();
    let key = ApiV3Key::new(s(&v["keys"], "api_v3_key")).unwrap();
    let wrong_key = ApiV3Key::new("00000000000000000000000000000000").unwrap();
    for a in v["aead"].as_array().unwrap() {
        let nonce = s(a, "nonce").as_bytes();
        let aad = s(a, "associated_data").as_bytes();
        let ct_b64 = s(a, "ciphertext");
        let plain = key.decrypt(nonce, aad, ct_b64).unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), s(a, "plaintext"));

        let ct = STANDARD.decode(ct_b64).unwrap();
        for i in 0..ct.len() {
            let mut t = ct.clone();
            flip_bit(&mut t, i);
            assert!(
                matches!(
                    key.decrypt(nonce, aad, &STANDARD.encode(&t)),
                    Err(Error::Decrypt)
                ),
                "byte {i}"
            );
        }
        let mut n = nonce.to_vec();
        flip_bit(&mut n, 0);
        assert!(matches!(key.decrypt(&n, aad, ct_b64), Err(Error::Decrypt)));
        let mut bad_aad = aad.to_vec();
        bad_aad.push(b'x');
        assert!(matches!(
            key.decrypt(nonce, &bad_aad, ct_b64),
            Err(Error::Decrypt)
        ));
        assert!(matches!(
            wrong_key.decrypt(nonce, aad, ct_b64),
            Err(Error::Decrypt)
        ));
        assert!(matches!(
            key.decrypt(nonce, aad, "!!!"),
            Err(Error::Encoding { .. })
        ));
        assert!(matches!(
            key.decrypt(nonce, aad, "AAAA"),
            Err(Error::Encoding { .. })
        ));
    }
}

#[test]
fn python_bill_parses_to_the_same_fen_and_hash() {
    let v = vectors();
    let b = &v["bill"];
    let text = s(b, "text");
    let location = BillLocation {
        hash_type: "SHA1".into(),
        hash_value: s(b, "sha1").into(),
        download_url: String::new(),
    };
    verify_hash(&location, text.as_bytes()).unwrap();
    let mut altered = text.as_bytes().to_vec();
    flip_bit(&mut altered, 200);
    assert!(matches!(
        verify_hash(&location, &altered),
        Err(Error::BillHashMismatch { .. })
    ));

    let bill = parse_trade_bill(text).unwrap();
    let rows = serde_json::to_value(&bill.rows).unwrap();
    assert_eq!(rows, b["rows"]);
    let summary = serde_json::to_value(&bill.summary).unwrap();
    assert_eq!(summary, b["summary"]);
}
