//! Resource endpoints: create, list (paged, filtered, sorted), get, update, soft delete,
//! validation naming the field, conflicts as 409, mass assignment refused with 422.

use crate::on_every_backend;

on_every_backend!(
    merchants_crud,
    venue_gateway_lock_lifecycle,
    lists_page_filter_and_sort,
    users_of_a_merchant,
    mass_assignment_is_refused,
    enrollment_codes_are_one_time_and_stored_hashed,
    locks_show_live_state,
);

mod scenarios {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::common::{DbKind, PASSWORD, TestApp, error_code, seed_world};

    pub async fn merchants_crud(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        app.create_user("root", "platform_admin", None).await;
        let t = app.token("root").await;
        let (s, m) = app
            .post("/api/v1/merchants", &t, json!({ "name": " Tea House ", "commission_bp": 650, "contact_phone": "13800000000" }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        assert_eq!(m["name"], "Tea House");
        let id = m["id"].as_str().unwrap();
        let (s, m2) = app
            .patch(
                &format!("/api/v1/merchants/{id}"),
                &t,
                json!({ "commission_bp": 0, "status": "suspended" }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{m2}");
        assert_eq!(
            (m2["commission_bp"].as_i64(), m2["status"].as_str()),
            (Some(0), Some("suspended"))
        );
        let (s, b) = app
            .patch(
                &format!("/api/v1/merchants/{id}"),
                &t,
                json!({ "commission_bp": -1 }),
            )
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("commission_bp"))
        );
        let (s, b) = app
            .patch(
                &format!("/api/v1/merchants/{id}"),
                &t,
                json!({ "status": "gone" }),
            )
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("status"))
        );

        // A merchant with a venue cannot be deleted; an empty one can, and is then gone.
        let (s, _) = app
            .post(
                "/api/v1/venues",
                &t,
                json!({ "name": "V", "merchant_id": id }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, b) = app.delete(&format!("/api/v1/merchants/{id}"), &t).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "conflict"));
        let (_, empty) = app
            .post(
                "/api/v1/merchants",
                &t,
                json!({ "name": "Empty", "commission_bp": 1 }),
            )
            .await;
        let empty_id = empty["id"].as_str().unwrap();
        let (s, _) = app
            .delete(&format!("/api/v1/merchants/{empty_id}"), &t)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.get(&format!("/api/v1/merchants/{empty_id}"), &t).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .delete(&format!("/api/v1/merchants/{empty_id}"), &t)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "deleting twice is 404");
        let (_, list) = app.get("/api/v1/merchants", &t).await;
        assert_eq!(list["total"], 1);
        app.stop().await;
    }

    pub async fn venue_gateway_lock_lifecycle(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let a = &w.a;
        let tech = &a.tech;

        let (s, lock) = app.get(&format!("/api/v1/locks/{}", a.lock_id), tech).await;
        assert_eq!(s, StatusCode::OK, "{lock}");
        assert_eq!(lock["venue_id"].as_str(), Some(a.venue_id.as_str()));
        assert_eq!(lock["merchant_id"].as_str(), Some(a.merchant_id.as_str()));
        assert_eq!(lock["price_plans"][0]["price_fen"], 300);
        let qr = lock["qr_code"].as_str().unwrap();
        assert_eq!(
            lock["qr_payload"].as_str().unwrap(),
            format!("http://127.0.0.1:8080/q/{qr}")
        );

        // Validation names the field.
        let base = json!({ "gateway_id": a.gateway_id, "device_code": "DEV-X", "bus_address": 2 });
        for (patch, field) in [
            (json!({ "bus_address": 0 }), "bus_address"),
            (json!({ "bus_address": 248 }), "bus_address"),
            (json!({ "device_code": "has space" }), "device_code"),
            (
                json!({ "price_plans": [{ "name": "free", "duration_minutes": 60, "price_fen": 0 }] }),
                "price_plans[0].price_fen",
            ),
            (
                json!({ "price_plans": [{ "name": "p", "duration_minutes": 0, "price_fen": 5 }] }),
                "price_plans[0].duration_minutes",
            ),
            (json!({ "gateway_id": w.b.gateway_id }), "gateway_id"),
        ] {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (s, b) = app.post("/api/v1/locks", tech, body).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {b}");
            assert_eq!(b["error"]["details"]["field"].as_str(), Some(field), "{b}");
        }
        // Uniqueness: device code, and bus address per gateway, are 409 not 500.
        let (s, b) = app
            .post(
                "/api/v1/locks",
                tech,
                json!({ "gateway_id": a.gateway_id, "device_code": "DEV-a-1", "bus_address": 9 }),
            )
            .await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "conflict"));
        let (s, b) = app
            .post(
                "/api/v1/locks",
                tech,
                json!({ "gateway_id": a.gateway_id, "device_code": "DEV-NEW", "bus_address": 1 }),
            )
            .await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "conflict"));

        // Replacing the price plans.
        let (s, l) = app
            .patch(
                &format!("/api/v1/locks/{}", a.lock_id),
                tech,
                json!({ "name": "Locker 1", "bus_address": 7, "price_plans": [
                    { "name": "30 min", "duration_minutes": 30, "price_fen": 150 },
                    { "name": "day", "duration_minutes": 1440, "price_fen": 2000 } ] }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert_eq!(l["bus_address"], 7);
        let plans: Vec<i64> = l["price_plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["price_fen"].as_i64().unwrap())
            .collect();
        assert_eq!(plans, vec![150, 2000]);

        // Deletion order: a venue with gateways and a gateway with locks are 409.
        let (s, _) = app
            .delete(&format!("/api/v1/gateways/{}", a.gateway_id), tech)
            .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _) = app
            .delete(&format!("/api/v1/venues/{}", a.venue_id), &a.owner)
            .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _) = app
            .delete(&format!("/api/v1/locks/{}", a.lock_id), tech)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.get(&format!("/api/v1/locks/{}", a.lock_id), tech).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // The freed device code and bus address can be used again.
        let (s, b) = app
            .post(
                "/api/v1/locks",
                tech,
                json!({ "gateway_id": a.gateway_id, "device_code": "DEV-a-1", "bus_address": 7 }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, _) = app
            .delete(
                &format!("/api/v1/locks/{}", b["id"].as_str().unwrap()),
                tech,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app
            .delete(&format!("/api/v1/gateways/{}", a.gateway_id), tech)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app
            .delete(&format!("/api/v1/venues/{}", a.venue_id), &a.owner)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        app.stop().await;
    }

    pub async fn lists_page_filter_and_sort(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let owner = &w.a.owner;
        for name in ["Charlie", "Alpha", "Bravo", "50%_off"] {
            let (s, _) = app
                .post("/api/v1/venues", owner, json!({ "name": name }))
                .await;
            assert_eq!(s, StatusCode::CREATED);
        }
        let (s, p1) = app
            .get("/api/v1/venues?sort=name&per_page=2&page=1", owner)
            .await;
        assert_eq!(s, StatusCode::OK, "{p1}");
        assert_eq!(
            p1["total"], 5,
            "4 new + the seeded venue, none of merchant b"
        );
        assert_eq!(p1["items"].as_array().unwrap().len(), 2);
        let (_, p3) = app
            .get("/api/v1/venues?sort=name&per_page=2&page=3", owner)
            .await;
        assert_eq!(p3["items"].as_array().unwrap().len(), 1);
        let (_, asc) = app.get("/api/v1/venues?sort=name&per_page=1", owner).await;
        assert_eq!(asc["items"][0]["name"], "50%_off");
        let (_, desc) = app.get("/api/v1/venues?sort=-name&per_page=1", owner).await;
        assert_eq!(desc["items"][0]["name"], "Venue a");
        let (_, found) = app.get("/api/v1/venues?q=ALP", owner).await;
        assert_eq!(found["total"], 1);
        assert_eq!(found["items"][0]["name"], "Alpha");
        // LIKE wildcards in the search are literal.
        let (_, lit) = app.get("/api/v1/venues?q=%25_", owner).await;
        assert_eq!(lit["total"], 1, "{lit}");
        // Admins can filter by merchant; merchants cannot widen their scope with it.
        let (_, by_b) = app
            .get(
                &format!("/api/v1/venues?merchant_id={}", w.b.merchant_id),
                &w.admin,
            )
            .await;
        assert_eq!(by_b["total"], 1);
        let (_, sneaky) = app
            .get(
                &format!("/api/v1/venues?merchant_id={}", w.b.merchant_id),
                owner,
            )
            .await;
        assert_eq!(sneaky["total"], 0);
        let (_, locks) = app
            .get(
                &format!("/api/v1/locks?gateway_id={}&status=unknown", w.a.gateway_id),
                owner,
            )
            .await;
        assert_eq!(locks["total"], 1);
        let (s, b) = app.get("/api/v1/locks?status=melted", owner).await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("status"))
        );
        app.stop().await;
    }

    pub async fn users_of_a_merchant(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let owner = &w.a.owner;
        let (s, u) = app
            .post("/api/v1/users", owner, json!({ "username": "Cashier1", "password": PASSWORD, "display_name": "Cashier", "role": "merchant_staff", "phone": "13900000001" }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{u}");
        assert_eq!(u["merchant_id"].as_str(), Some(w.a.merchant_id.as_str()));
        assert_eq!(u["username"], "cashier1");
        let (s, b) = app
            .post("/api/v1/users", owner, json!({ "username": "cashier1", "password": PASSWORD, "display_name": "Dup", "role": "merchant_staff" }))
            .await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "conflict"));
        let (s, b) = app
            .post("/api/v1/users", owner, json!({ "username": "boss", "password": PASSWORD, "display_name": "Boss", "role": "platform_admin" }))
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("role"))
        );
        let (s, b) = app
            .post("/api/v1/users", owner, json!({ "username": "shorty", "password": "short", "display_name": "S", "role": "technician" }))
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("password"))
        );

        let (_, list) = app.get("/api/v1/users?role=merchant_staff", owner).await;
        assert_eq!(list["total"], 2, "staff-a and cashier1: {list}");
        let (_, all) = app.get("/api/v1/users?per_page=200", owner).await;
        assert!(
            all["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["merchant_id"].as_str() == Some(w.a.merchant_id.as_str()))
        );

        // Deleting a user ends their sessions at once.
        let uid = u["id"].as_str().unwrap();
        let cashier = app.token("13900000001").await;
        let (s, _) = app.get("/api/v1/me", &cashier).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = app.delete(&format!("/api/v1/users/{uid}"), owner).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.get("/api/v1/me", &cashier).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = app.login("cashier1", PASSWORD).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        app.stop().await;
    }

    pub async fn locks_show_live_state(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let path = format!("/api/v1/locks/{}", w.a.lock_id);
        // Nothing reported yet: the fields are present and null.
        let (s, l) = app.get(&path, &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{l}");
        for f in ["door_closed", "locked", "fw_version", "last_heartbeat_at"] {
            assert!(l.get(f).is_some_and(|v| v.is_null()), "{f} in {l}");
        }
        // What the gateway link writes (flags are BIGINT 0/1) shows on get and list.
        sqlx::query(
            "UPDATE locks SET door_closed = 1, locked = 0, fw_version = '1.4.2', \
             last_heartbeat_at = 1700000000123, status = 'online' WHERE id = $1",
        )
        .bind(w.a.lock_id.clone())
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        let (s, l) = app.get(&path, &w.a.owner).await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert_eq!(l["door_closed"], true, "{l}");
        assert_eq!(l["locked"], false);
        assert_eq!(l["fw_version"], "1.4.2");
        assert_eq!(l["last_heartbeat_at"], 1_700_000_000_123_i64);
        assert_eq!(l["status"], "online");
        let (s, list) = app.get("/api/v1/locks", &w.a.staff).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let item = &list["items"][0];
        assert_eq!(item["id"], w.a.lock_id.as_str());
        assert_eq!(item["door_closed"], true);
        assert_eq!(item["locked"], false);
        assert_eq!(item["fw_version"], "1.4.2");
        assert_eq!(item["last_heartbeat_at"], 1_700_000_000_123_i64);
        // B's lock is untouched and A's is not B's to see.
        let (s, lb) = app
            .get(&format!("/api/v1/locks/{}", w.b.lock_id), &w.b.owner)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert!(lb["door_closed"].is_null(), "{lb}");
        let (s, _) = app.get(&path, &w.b.owner).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // A client may not set them.
        let (s, b) = app
            .patch(&path, &w.a.owner, json!({ "fw_version": "9.9.9" }))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(error_code(&b), "protected_field");
        assert_eq!(b["error"]["details"]["field"], "fw_version");
        app.stop().await;
    }

    pub async fn mass_assignment_is_refused(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let a = &w.a;
        let cases = [
            (
                "POST",
                "/api/v1/venues".to_string(),
                json!({ "name": "V", "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
            (
                "PATCH",
                format!("/api/v1/venues/{}", a.venue_id),
                json!({ "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
            (
                "PATCH",
                "/api/v1/me".to_string(),
                json!({ "role": "platform_admin" }),
                "role",
            ),
            (
                "PATCH",
                "/api/v1/me".to_string(),
                json!({ "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
            (
                "PATCH",
                format!("/api/v1/users/{}", a.staff_user_id),
                json!({ "role": "merchant_owner" }),
                "role",
            ),
            (
                "POST",
                "/api/v1/users".to_string(),
                json!({ "username": "xavier", "password": PASSWORD, "display_name": "X", "role": "technician", "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
            (
                "POST",
                "/api/v1/gateways".to_string(),
                json!({ "venue_id": a.venue_id, "name": "G", "status": "enrolled" }),
                "status",
            ),
            (
                "PATCH",
                format!("/api/v1/locks/{}", a.lock_id),
                json!({ "qr_code": "AAAA" }),
                "qr_code",
            ),
            (
                "PATCH",
                format!("/api/v1/locks/{}", a.lock_id),
                json!({ "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
            (
                "POST",
                "/api/v1/enrollment-codes".to_string(),
                json!({ "venue_id": a.venue_id, "merchant_id": w.b.merchant_id }),
                "merchant_id",
            ),
        ];
        for (method, path, body, field) in cases {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let (s, b) = app.call(m, &path, Some(&a.owner), Some(body)).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{method} {path}: {b}");
            assert_eq!(error_code(&b), "protected_field", "{method} {path}");
            assert_eq!(
                b["error"]["details"]["field"].as_str(),
                Some(field),
                "{method} {path}"
            );
        }
        // Nothing changed.
        let (_, me) = app.get("/api/v1/me", &a.owner).await;
        assert_eq!(me["role"], "merchant_owner");
        // Commission is only reachable through the platform's merchant endpoints.
        let (s, _) = app
            .patch(
                &format!("/api/v1/merchants/{}", a.merchant_id),
                &a.owner,
                json!({ "commission_bp": 0 }),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (_, m) = app
            .get(&format!("/api/v1/merchants/{}", a.merchant_id), &w.admin)
            .await;
        assert_eq!(m["commission_bp"], 500);
        app.stop().await;
    }

    pub async fn enrollment_codes_are_one_time_and_stored_hashed(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        let a = &w.a;
        let (s, c) = app
            .post(
                "/api/v1/enrollment-codes",
                &a.owner,
                json!({ "venue_id": a.venue_id, "ttl_minutes": 30 }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        let code = c["code"].as_str().unwrap().to_string();
        assert_eq!(c["status"], "active");
        let id = c["id"].as_str().unwrap();
        let (_, got) = app
            .get(&format!("/api/v1/enrollment-codes/{id}"), &a.tech)
            .await;
        assert!(
            got.get("code").is_none(),
            "the code is shown once only: {got}"
        );
        let stored: Vec<String> = sqlx::query_scalar("SELECT code_hash FROM enrollment_codes")
            .fetch_all(&app.state.db.pool)
            .await
            .unwrap();
        assert!(
            stored
                .iter()
                .all(|h| h.len() == 64 && !h.contains(&code.replace('-', "")))
        );

        let (s, b) = app
            .post(
                "/api/v1/enrollment-codes",
                &a.owner,
                json!({ "venue_id": w.b.venue_id }),
            )
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("venue_id"))
        );
        let (s, b) = app
            .post(
                "/api/v1/enrollment-codes",
                &a.owner,
                json!({ "venue_id": a.venue_id, "ttl_minutes": 0 }),
            )
            .await;
        assert_eq!(
            (s, b["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("ttl_minutes"))
        );

        // Claimed once (typed in lower case by a technician), never twice.
        let db = &app.state.db;
        let claimed = dmr_cloud::enrollment::store::claim(db, &code.to_lowercase())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.venue_id, a.venue_id);
        assert!(
            dmr_cloud::enrollment::store::claim(db, &code)
                .await
                .unwrap()
                .is_none()
        );
        let (_, got) = app
            .get(&format!("/api/v1/enrollment-codes/{id}"), &a.tech)
            .await;
        assert_eq!(got["status"], "used");

        // Concurrent claims of one code: exactly one wins.
        let (_, c3) = app
            .post(
                "/api/v1/enrollment-codes",
                &a.owner,
                json!({ "venue_id": a.venue_id }),
            )
            .await;
        let code3 = c3["code"].as_str().unwrap();
        let (x, y) = tokio::join!(
            dmr_cloud::enrollment::store::claim(db, code3),
            dmr_cloud::enrollment::store::claim(db, code3)
        );
        assert_eq!(
            [x.unwrap().is_some(), y.unwrap().is_some()]
                .iter()
                .filter(|w| **w)
                .count(),
            1
        );

        // A revoked code cannot be claimed.
        let (_, c2) = app
            .post(
                "/api/v1/enrollment-codes",
                &a.owner,
                json!({ "venue_id": a.venue_id }),
            )
            .await;
        let (s, _) = app
            .delete(
                &format!("/api/v1/enrollment-codes/{}", c2["id"].as_str().unwrap()),
                &a.owner,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(
            dmr_cloud::enrollment::store::claim(db, c2["code"].as_str().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        app.stop().await;
    }
}
