//! The role × route matrix: for every route in the router and every role, a role without
//! the route's permission gets 403, a role with it gets through, and a merchant role asking
//! for another tenant's object gets 404, never the object.

use crate::on_every_backend;

on_every_backend!(role_route_matrix);

mod scenarios {
    use dmr_cloud::http::routes::Access;
    use dmr_cloud::rbac::Role;
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    use crate::common::{DbKind, Tenant, TestApp, error_code, seed_world};

    /// Firmware releases belong to the platform, not to a merchant: every role that may
    /// read them sees the same rows, so there is no other tenant's object to hide.
    fn tenant_scoped(path: &str) -> bool {
        !path.starts_with("/api/v1/firmware-releases")
    }

    fn object_id<'a>(path: &str, t: &'a Tenant, firmware_id: &'a str) -> &'a str {
        let kind = path
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or("");
        match kind {
            "merchants" => &t.merchant_id,
            "venues" => &t.venue_id,
            "gateways" => &t.gateway_id,
            "locks" => &t.lock_id,
            "users" => &t.staff_user_id,
            "enrollment-codes" => &t.code_id,
            "orders" => &t.order_id,
            "settlements" => &t.settlement_id,
            "alarms" => &t.alarm_id,
            "reconciliation" => &t.report_id,
            "firmware-releases" => firmware_id,
            other => panic!("the matrix test does not know {other}: add it"),
        }
    }

    pub async fn role_route_matrix(kind: &DbKind) {
        let app = TestApp::spawn_with(kind, crate::firmware::support::trust_vendor_key).await;
        let w = crate::orders::support::seed_money(&app, seed_world(&app).await).await;
        let firmware_id = crate::firmware::support::publish(&app, &w.admin, "1.0.1").await;
        let firmware_id = firmware_id.as_str();
        let callers = [
            (Role::PlatformAdmin, w.admin.clone()),
            (Role::MerchantOwner, w.a.owner.clone()),
            (Role::MerchantStaff, w.a.staff.clone()),
            (Role::Technician, w.a.tech.clone()),
        ];
        let mut checked = 0;
        for route in &app.routes {
            let has_id = route.path.contains("{id}");
            let body =
                (route.method == Method::POST || route.method == Method::PATCH).then(|| json!({}));
            if route.path == "/api/v1/live" {
                // An endless stream: check the status only, never read the body.
                for (role, token) in &callers {
                    let resp = app
                        .client
                        .get(app.url_of(route.path))
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap();
                    let expected = if role.has(dmr_cloud::rbac::Permission::DeviceRead) {
                        StatusCode::OK
                    } else {
                        StatusCode::FORBIDDEN
                    };
                    assert_eq!(resp.status(), expected, "{role:?} GET /api/v1/live");
                    checked += 1;
                }
                let (s, _) = app.call(Method::GET, route.path, None, None).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED);
                continue;
            }
            match route.access {
                Access::Gateway => {
                    // Signed by a gateway key or nothing: a user's token is not enough.
                    for token in [None, Some(w.admin.as_str())] {
                        let (s, b) = app
                            .call(route.method.clone(), route.path, token, body.clone())
                            .await;
                        assert_eq!(
                            s,
                            StatusCode::UNAUTHORIZED,
                            "{} {}",
                            route.method,
                            route.path
                        );
                        assert_eq!(error_code(&b), "gateway_auth_failed");
                        checked += 1;
                    }
                }
                Access::Infra | Access::Public => {
                    let (s, _) = app
                        .call(route.method.clone(), route.path, None, body.clone())
                        .await;
                    assert_ne!(
                        s,
                        StatusCode::UNAUTHORIZED,
                        "{} {} is public",
                        route.method,
                        route.path
                    );
                    assert_ne!(s, StatusCode::FORBIDDEN);
                    checked += 1;
                }
                Access::Hook => {
                    // A user's token is no substitute for the broker's shared secret.
                    for token in [None, Some(w.admin.as_str())] {
                        let (s, b) = app
                            .call(route.method.clone(), route.path, token, body.clone())
                            .await;
                        assert_eq!(
                            s,
                            StatusCode::UNAUTHORIZED,
                            "{} {} needs the hook secret",
                            route.method,
                            route.path
                        );
                        assert_eq!(error_code(&b), "unauthorized");
                    }
                    checked += 1;
                }
                Access::Authenticated => {
                    let (s, b) = app
                        .call(route.method.clone(), route.path, None, body.clone())
                        .await;
                    assert_eq!(
                        s,
                        StatusCode::UNAUTHORIZED,
                        "{} {} needs a login",
                        route.method,
                        route.path
                    );
                    assert_eq!(error_code(&b), "unauthorized");
                    for (_, token) in &callers {
                        let (s, _) = app
                            .call(route.method.clone(), route.path, Some(token), body.clone())
                            .await;
                        assert!(
                            s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                            "{} {}: {s}",
                            route.method,
                            route.path
                        );
                        checked += 1;
                    }
                }
                Access::Perm(perm) => {
                    let (s, _) = app
                        .call(route.method.clone(), route.path, None, body.clone())
                        .await;
                    assert_eq!(
                        s,
                        StatusCode::UNAUTHORIZED,
                        "{} {} without a token",
                        route.method,
                        route.path
                    );
                    for (role, token) in &callers {
                        let own = if has_id {
                            route
                                .path
                                .replace("{id}", object_id(route.path, &w.a, firmware_id))
                        } else {
                            route.path.to_string()
                        };
                        let other = if has_id {
                            route
                                .path
                                .replace("{id}", object_id(route.path, &w.b, firmware_id))
                        } else {
                            route.path.to_string()
                        };
                        let what = format!("{role:?} {} {}", route.method, route.path);
                        if !role.has(perm) {
                            for path in [&own, &other] {
                                let (s, b) = app
                                    .call(route.method.clone(), path, Some(token), body.clone())
                                    .await;
                                assert_eq!(s, StatusCode::FORBIDDEN, "{what}: {b}");
                                assert_eq!(
                                    b["error"]["details"]["permission"].as_str(),
                                    Some(perm.as_str())
                                );
                            }
                        } else if has_id {
                            if *role != Role::PlatformAdmin && tenant_scoped(route.path) {
                                let (s, b) = app
                                    .call(route.method.clone(), &other, Some(token), body.clone())
                                    .await;
                                assert_eq!(
                                    s,
                                    StatusCode::NOT_FOUND,
                                    "{what} on another tenant's object: {b}"
                                );
                                assert_eq!(error_code(&b), "not_found");
                            }
                            if route.method == Method::GET {
                                let (s, b) = app.call(Method::GET, &own, Some(token), None).await;
                                assert_eq!(s, StatusCode::OK, "{what} own object: {b}");
                            }
                        } else if route.method == Method::GET {
                            let (s, b) = app.call(Method::GET, &own, Some(token), None).await;
                            assert_eq!(s, StatusCode::OK, "{what}: {b}");
                            // Summaries and CSV exports are not pages.
                            let Some(items) = b["items"].as_array() else {
                                checked += 1;
                                continue;
                            };
                            assert!(!items.is_empty(), "{what}: the seeded object is listed");
                            // Platform-wide rows (firmware) have no merchant to check.
                            let scoped = tenant_scoped(route.path);
                            if scoped && *role != Role::PlatformAdmin {
                                for item in items {
                                    assert_eq!(
                                        item["merchant_id"].as_str(),
                                        Some(w.a.merchant_id.as_str()),
                                        "{what} leaked {item}"
                                    );
                                }
                            } else if scoped && route.path != "/api/v1/merchants" {
                                assert!(
                                    items.iter().any(|i| i["merchant_id"].as_str()
                                        == Some(w.b.merchant_id.as_str())),
                                    "{what}: admin sees all tenants"
                                );
                            }
                        } else {
                            // Allowed to create: an empty body gets past the guard to validation.
                            let (s, b) = app
                                .call(route.method.clone(), &own, Some(token), body.clone())
                                .await;
                            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {b}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100, "matrix covered {checked} role × route cells");
        // The other tenant's objects are untouched by everything above.
        let (s, _) = app
            .get(&format!("/api/v1/locks/{}", w.b.lock_id), &w.b.owner)
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = app
            .get(&format!("/api/v1/users/{}", w.b.staff_user_id), &w.b.owner)
            .await;
        assert_eq!(s, StatusCode::OK);
        app.stop().await;
    }
}
