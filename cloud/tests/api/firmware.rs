//! Firmware releases: images built and signed by the protocol crate's own builder (the
//! code `dmr-tech fw sign` runs), uploaded, listed, downloaded byte for byte, withdrawn;
//! every kind of bad image refused with a 422 naming what is wrong, a duplicate version
//! 409, an oversize upload 413.

use crate::on_every_backend;

on_every_backend!(publish_list_download_withdraw, bad_images_are_refused);

pub mod support {
    use dmr_cloud::config::Config;
    use dmr_protocol::firmware;
    use dmr_protocol::registers::{FwVersion, HARDWARE_LOCK};
    use ed25519_dalek::SigningKey;
    use reqwest::StatusCode;
    use serde_json::Value;

    use crate::common::TestApp;

    pub const KEY_ID: u32 = 41;

    pub fn vendor_key() -> SigningKey {
        SigningKey::from_bytes(&[0x5Au8; 32])
    }

    /// Config tweak: the test vendor key is trusted.
    pub fn trust_vendor_key(c: &mut Config) {
        c.firmware
            .vendor_keys
            .insert(KEY_ID, vendor_key().verifying_key());
    }

    pub fn image_of(version: &str, payload: &[u8]) -> Vec<u8> {
        let v: FwVersion = version.parse().unwrap();
        firmware::build(HARDWARE_LOCK, v, payload, KEY_ID, &vendor_key()).unwrap()
    }

    pub fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    pub async fn upload(
        app: &TestApp,
        token: &str,
        image: Vec<u8>,
        query: &str,
    ) -> (StatusCode, Value) {
        let resp = app
            .client
            .post(app.url_of(&format!("/api/v1/firmware-releases{query}")))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(image)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Publishes a release and returns its id.
    pub async fn publish(app: &TestApp, admin: &str, version: &str) -> String {
        let (s, b) = upload(app, admin, image_of(version, &payload(300, 1)), "").await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_str().unwrap().to_string()
    }
}

mod scenarios {
    use dmr_protocol::firmware::HEADER_LEN;
    use reqwest::StatusCode;
    use serde_json::json;
    use sha2::{Digest as _, Sha256};

    use super::support::{image_of, payload, trust_vendor_key, upload};
    use crate::common::{DbKind, TestApp, error_code, seed_world};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub async fn publish_list_download_withdraw(kind: &DbKind) {
        let app = TestApp::spawn_with(kind, trust_vendor_key).await;
        let w = seed_world(&app).await;
        let body = payload(70_000, 3);
        let image = image_of("1.4.2", &body);
        let (s, r) = upload(
            &app,
            &w.admin,
            image.clone(),
            "?notes=%E4%BF%AE%E5%A4%8D%E9%97%A8%E7%A3%81+debounce&version=1.4.2",
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_eq!(r["version"], "1.4.2");
        assert_eq!(r["hardware"], 1);
        assert_eq!(r["status"], "published");
        assert_eq!(r["size_bytes"], image.len());
        assert_eq!(r["payload_len"], body.len());
        assert_eq!(r["key_id"], super::support::KEY_ID);
        assert_eq!(r["payload_sha256"], hex(&Sha256::digest(&body)));
        assert_eq!(r["image_sha256"], hex(&Sha256::digest(&image)));
        assert_eq!(r["notes"], "修复门磁 debounce");
        assert_eq!(r["created_by_name"], "admin", "{r}");
        let id = r["id"].as_str().unwrap().to_string();

        // Versions sort numerically: 1.10.0 is newer than 1.4.2 and 1.9.0.
        for v in ["1.10.0", "1.9.0"] {
            let (s, b) = upload(&app, &w.admin, image_of(v, &payload(10, 9)), "").await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        let (s, page) = app.get("/api/v1/firmware-releases", &w.admin).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 3);
        let versions: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["1.10.0", "1.9.0", "1.4.2"]);
        assert!(page["items"][0].get("image").is_none(), "no bytes in lists");
        let (_, p2) = app
            .get("/api/v1/firmware-releases?per_page=2&page=2", &w.a.tech)
            .await;
        assert_eq!(p2["items"].as_array().unwrap().len(), 1);
        assert_eq!(p2["items"][0]["version"], "1.4.2");

        // The technician downloads exactly the bytes that were uploaded.
        let resp = app
            .client
            .get(app.url_of(&format!("/api/v1/firmware-releases/{id}/image")))
            .bearer_auth(&w.a.tech)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(
            resp.headers()["x-content-sha256"].to_str().unwrap(),
            hex(&Sha256::digest(&image))
        );
        assert!(
            resp.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("dmr-fw-hw1-1_4_2.bin")
        );
        let got = resp.bytes().await.unwrap();
        assert_eq!(got.as_ref(), image.as_slice());

        // Merchant roles never see firmware; technicians may not publish.
        let (s, b) = app.get("/api/v1/firmware-releases", &w.a.owner).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        let (s, b) = upload(&app, &w.a.tech, image_of("2.0.0", &[1, 2, 3]), "").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"]["details"]["permission"], "firmware:manage");

        // The same version again, even with other bytes: 409.
        let (s, b) = upload(&app, &w.admin, image_of("1.4.2", &payload(5, 5)), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("1.4.2"),
            "{b}"
        );

        // Withdraw: a reason is required; afterwards the image is refused, the row stays,
        // and the version still cannot be published again.
        let url = format!("/api/v1/firmware-releases/{id}/withdraw");
        let (s, b) = app.post(&url, &w.admin, json!({ "reason": " " })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["error"]["details"]["field"], "reason");
        let (s, b) = app.post(&url, &w.a.tech, json!({ "reason": "x" })).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        let (s, b) = app
            .post(
                &url,
                &w.admin,
                json!({ "reason": "door sensor regression" }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["status"], "withdrawn");
        assert_eq!(b["withdrawn_reason"], "door sensor regression");
        assert_eq!(b["withdrawn_by_name"], "admin");
        assert!(b["withdrawn_at"].as_i64().unwrap() > 0);
        let (s, b) = app.post(&url, &w.admin, json!({ "reason": "again" })).await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        let (s, b) = app
            .get(&format!("/api/v1/firmware-releases/{id}/image"), &w.a.tech)
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("door sensor regression"),
            "{b}"
        );
        let (s, b) = app
            .get(&format!("/api/v1/firmware-releases/{id}"), &w.a.tech)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["status"], "withdrawn");
        let (_, only) = app
            .get("/api/v1/firmware-releases?status=withdrawn", &w.admin)
            .await;
        assert_eq!(only["total"], 1);
        let (s, b) = upload(&app, &w.admin, image_of("1.4.2", &body), "").await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        let (s, b) = app
            .get("/api/v1/firmware-releases?status=gone", &w.admin)
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, _) = app
            .get(
                &format!("/api/v1/firmware-releases/{}", uuid::Uuid::new_v4()),
                &w.admin,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        app.stop().await;
    }

    pub async fn bad_images_are_refused(kind: &DbKind) {
        let app = TestApp::spawn_with(kind, |c| {
            trust_vendor_key(c);
            c.firmware.max_image_bytes = 8192;
        })
        .await;
        let w = seed_world(&app).await;
        let good = image_of("3.1.0", &payload(1000, 7));

        let refused = |s: StatusCode, b: &serde_json::Value, needle: &str| {
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
            assert_eq!(error_code(b), "validation_failed", "{b}");
            let m = b["error"]["message"].as_str().unwrap();
            assert!(m.contains(needle), "{needle:?} not in {m:?}");
        };

        // A payload byte flipped after signing: the hash no longer matches.
        let mut tampered = good.clone();
        tampered[HEADER_LEN + 17] ^= 0x40;
        let (s, b) = upload(&app, &w.admin, tampered, "").await;
        refused(s, &b, "SHA-256");
        // The version in the signed header changed: the signature fails.
        let mut forged = good.clone();
        forged[9] = 2;
        let (s, b) = upload(&app, &w.admin, forged, "").await;
        refused(s, &b, "signature does not verify");
        // Signed by a key the cloud does not trust.
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let foreign = dmr_protocol::firmware::build(
            1,
            "3.1.1".parse().unwrap(),
            &payload(50, 1),
            7,
            &stranger,
        )
        .unwrap();
        let (s, b) = upload(&app, &w.admin, foreign, "").await;
        refused(s, &b, "vendor key 7, which is not trusted");
        // Truncated, padded, not an image at all, empty.
        let (s, b) = upload(&app, &w.admin, good[..good.len() - 3].to_vec(), "").await;
        refused(s, &b, "its header says");
        let mut padded = good.clone();
        padded.extend_from_slice(b"junk");
        let (s, b) = upload(&app, &w.admin, padded, "").await;
        refused(s, &b, "its header says");
        let (s, b) = upload(&app, &w.admin, b"PK\x03\x04 a zip file".to_vec(), "").await;
        refused(s, &b, "not a firmware image");
        let (s, b) = upload(&app, &w.admin, Vec::new(), "").await;
        refused(s, &b, "empty");
        // Hardware the cloud does not know; version 0.0.0.
        let other_hw = dmr_protocol::firmware::build(
            9,
            "1.0.0".parse().unwrap(),
            &payload(10, 1),
            super::support::KEY_ID,
            &super::support::vendor_key(),
        )
        .unwrap();
        let (s, b) = upload(&app, &w.admin, other_hw, "").await;
        refused(s, &b, "hardware type 9");
        let (s, b) = upload(&app, &w.admin, image_of("0.0.0", &[1]), "").await;
        refused(s, &b, "0.0.0");
        // The uploader said which version they meant.
        let (s, b) = upload(&app, &w.admin, good.clone(), "?version=3.2.0").await;
        refused(s, &b, "carries version 3.1.0, not 3.2.0");
        assert_eq!(b["error"]["details"]["field"], "version");
        let (s, b) = upload(&app, &w.admin, good.clone(), "?version=three").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        let (s, b) = upload(&app, &w.admin, good.clone(), "?colour=red").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        // Over firmware.max_image_bytes: 413 naming the limit.
        let (s, b) = upload(&app, &w.admin, image_of("3.3.0", &payload(9000, 2)), "").await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("8192"),
            "{b}"
        );
        // Nothing above was stored; the good image still goes in.
        let (_, page) = app.get("/api/v1/firmware-releases", &w.admin).await;
        assert_eq!(page["total"], 0, "{page}");
        let (s, b) = upload(&app, &w.admin, good, "?version=3.1.0").await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        app.stop().await;

        // A cloud without vendor keys refuses everything and says how to fix it.
        let bare = TestApp::spawn(kind).await;
        let w = seed_world(&bare).await;
        let (s, b) = upload(&bare, &w.admin, image_of("1.0.0", &[1, 2]), "").await;
        refused(s, &b, "firmware.vendor_keys");
        bare.stop().await;
    }
}
