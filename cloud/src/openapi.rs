//! The OpenAPI 3.1 document served at `/api/openapi.json`. It is written by hand, apart
//! from the route table, on purpose: a test compares the two in both directions, so a
//! route added without documentation (or documentation for a route that is gone) fails
//! the build instead of drifting.

use axum::Json;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn ok(schema: &str, status: &str) -> Value {
    json!({ status: { "description": "success", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } } })
}

/// Standard operation: summary, permission note, success response, error responses.
fn op(summary: &str, permission: Option<&str>, success: Value, body: Option<&str>) -> Value {
    let mut responses = success;
    if let Some(map) = responses.as_object_mut() {
        map.insert("400".into(), error_response("malformed request"));
        map.insert(
            "422".into(),
            error_response("validation failed (details.field names the field)"),
        );
        if permission.is_some() {
            map.insert(
                "401".into(),
                error_response("missing or invalid access token"),
            );
            map.insert("403".into(), error_response("role lacks the permission"));
            map.insert(
                "404".into(),
                error_response("no such object in your tenant"),
            );
        }
        map.insert("429".into(), error_response("rate limited"));
    }
    let mut o = json!({ "summary": summary, "responses": responses });
    if let Some(p) = permission {
        o["security"] = json!([{ "bearer": [] }]);
        if !p.is_empty() {
            o["x-permission"] = json!(p);
        }
    }
    if let Some(b) = body {
        o["requestBody"] = json_body(b);
    }
    o
}

fn list_params(extra: &[&str]) -> Value {
    let mut params = vec![
        json!({ "name": "page", "in": "query", "schema": { "type": "integer", "minimum": 1 } }),
        json!({ "name": "per_page", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200 } }),
        json!({ "name": "sort", "in": "query", "schema": { "type": "string" }, "description": "a sort key, prefixed with - for descending" }),
    ];
    for e in extra {
        params.push(json!({ "name": e, "in": "query", "schema": { "type": "string" } }));
    }
    Value::Array(params)
}

fn id_param() -> Value {
    json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }])
}

/// A collection (list + create) and an item (get, update, delete) of one resource.
fn resource(
    paths: &mut serde_json::Map<String, Value>,
    base: &str,
    name: &str,
    read: &str,
    write: &str,
    filters: &[&str],
    updatable: bool,
) {
    let mut list = op(
        &format!("List {name}s"),
        Some(read),
        ok(&format!("{name}Page"), "200"),
        None,
    );
    list["parameters"] = list_params(filters);
    paths.insert(
        base.to_string(),
        json!({
            "get": list,
            "post": op(&format!("Create a {name}"), Some(write), ok(name, "201"), Some(&format!("Create{name}"))),
        }),
    );
    let mut item = json!({
        "parameters": id_param(),
        "get": op(&format!("Get a {name}"), Some(read), ok(name, "200"), None),
        "delete": op(&format!("Delete (soft) a {name}"), Some(write), json!({ "204": { "description": "deleted" } }), None),
    });
    if updatable {
        item["patch"] = op(
            &format!("Update a {name}"),
            Some(write),
            ok(name, "200"),
            Some(&format!("Update{name}")),
        );
    }
    paths.insert(format!("{base}/{{id}}"), item);
}

fn obj(props: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required })
}

fn page_of(item: &str) -> Value {
    json!({ "type": "object", "properties": {
        "items": { "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } },
        "page": { "type": "integer" }, "per_page": { "type": "integer" },
        "total": { "type": "integer", "description": "Rows matching; exact when total_exact, otherwise a lower bound (counting stops past 10,000 rows or the page after the requested one, whichever is deeper)" },
        "total_exact": { "type": "boolean", "description": "false when more rows match than total says" } },
        "required": ["items", "page", "per_page", "total", "total_exact"] })
}

/// The gateway link: enrollment, gateway-signed requests, alarms and the live stream.
fn link_paths(paths: &mut serde_json::Map<String, Value>) {
    let gw_auth = |summary: &str, success: Value, body: Option<&str>| {
        let mut o = op(summary, None, success, body);
        o["security"] = json!([{ "gateway": [] }]);
        o["responses"]["401"] = error_response(
            "gateway_auth_failed; details.reason is unknown_gateway, bad_signature, stale, replayed or mismatch",
        );
        o["responses"]["413"] = error_response("body larger than the server accepts");
        o
    };
    let mut enroll = op(
        "Enroll a gateway with a one-time code and its public key (proof of possession in pop)",
        None,
        ok("EnrollResponse", "201"),
        Some("EnrollRequest"),
    );
    enroll["responses"]["403"] =
        error_response("enrollment_code_invalid: unknown, used, revoked or expired code");
    paths.insert("/api/v1/gateway/enroll".into(), json!({ "post": enroll }));
    paths.insert(
        "/api/v1/gateway/events".into(),
        json!({ "post": gw_auth(
            "Drain signed gateway messages (at most 500); each is applied once by id",
            ok("EventsResponse", "200"),
            Some("EventsRequest"),
        ) }),
    );
    let mut sync = gw_auth(
        "Pull trusted keys, tokens, revocations, config and locks; the body is a JWS signed by the active cloud key",
        json!({ "200": { "description": "compact JWS", "content": { "application/jose": { "schema": { "type": "string" } } } } }),
        None,
    );
    sync["parameters"] = json!([
        { "name": "tokens_after", "in": "query", "schema": { "type": "string" }, "description": "cursor from the last sync" },
        { "name": "revocations_version", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
        { "name": "config_version", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
    ]);
    paths.insert("/api/v1/gateway/sync".into(), json!({ "get": sync }));
    let mut live = op(
        "Server-sent events of lock, gateway, alarm and order changes in your tenant (Last-Event-ID resumes)",
        Some("device:read"),
        json!({ "200": { "description": "text/event-stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } } }),
        None,
    );
    live["parameters"] =
        json!([{ "name": "Last-Event-ID", "in": "header", "schema": { "type": "string" } }]);
    paths.insert("/api/v1/live".into(), json!({ "get": live }));
    let mut alarms = op(
        "List alarms, newest first",
        Some("device:read"),
        ok("AlarmPage", "200"),
        None,
    );
    alarms["parameters"] = list_params(&["merchant_id", "gateway_id", "lock_id", "kind", "open"]);
    paths.insert("/api/v1/alarms".into(), json!({ "get": alarms }));
    paths.insert(
        "/api/v1/alarms/{id}/ack".into(),
        json!({ "parameters": id_param(), "post": op("Acknowledge an alarm", Some("device:write"), ok("Alarm", "200"), None) }),
    );
    let mut unlock = op(
        "Open a lock now: signs a one-use, 5-minute maintenance token and sends it to the lock's gateway as cmd unlock",
        Some("device:unlock"),
        ok("UnlockSent", "202"),
        None,
    );
    unlock["responses"]["409"] =
        error_response("the lock is disabled or its gateway is not enrolled");
    unlock["responses"]["503"] =
        error_response("broker_unavailable: the cloud is not connected to the MQTT broker");
    paths.insert(
        "/api/v1/locks/{id}/unlock".into(),
        json!({ "parameters": id_param(), "post": unlock }),
    );
    let mut commands = op(
        "Commands sent to a gateway, newest first, with their ack state",
        Some("device:read"),
        ok("CommandPage", "200"),
        None,
    );
    commands["parameters"] = json!([
        { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } },
        { "name": "page", "in": "query", "schema": { "type": "integer", "minimum": 1 } },
        { "name": "per_page", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 200 } },
        { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["sent", "acked", "expired"] } },
    ]);
    paths.insert(
        "/api/v1/gateways/{id}/commands".into(),
        json!({ "get": commands }),
    );
}

/// Builds the document.
pub fn spec() -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert("/health".into(), json!({ "get": {
        "summary": "Liveness and dependency check (database)",
        "responses": { "200": { "description": "healthy" }, "503": { "description": "a dependency is down" } } } }));
    paths.insert(
        "/metrics".into(),
        json!({ "get": {
        "summary": "Prometheus metrics (text format)",
        "responses": { "200": { "description": "metrics", "content": { "text/plain": {} } } } } }),
    );
    paths.insert("/api/openapi.json".into(), json!({ "get": {
        "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1 document" } } } }));
    let hook = |summary: &str, body: &str, result: &str| {
        json!({ "post": {
            "summary": summary,
            "security": [{ "hookSecret": [] }],
            "requestBody": json_body(body),
            "responses": {
                "200": { "description": "the decision", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{result}") } } } },
                "400": error_response("malformed request"),
                "401": error_response("missing or wrong X-DMR-Hook-Secret, or hooks not configured (mqtt.hook_secret)"),
                "422": error_response("validation failed (details.field names the field)"),
            } } })
    };
    paths.insert(
        "/api/v1/broker/auth".into(),
        hook(
            "EMQX 5 HTTP authentication hook: may this MQTT client connect?",
            "BrokerAuthRequest",
            "BrokerAuthResult",
        ),
    );
    paths.insert(
        "/api/v1/broker/acl".into(),
        hook(
            "EMQX 5 HTTP authorization hook: may this client publish/subscribe to the topic?",
            "BrokerAclRequest",
            "BrokerAclResult",
        ),
    );
    paths.insert("/api/v1/auth/login".into(), json!({ "post":
        op("Log in with username or phone and password", None, ok("Tokens", "200"), Some("Login")) }));
    paths.insert("/api/v1/auth/refresh".into(), json!({ "post":
        op("Trade a refresh token for new tokens (the old one is spent; reuse revokes the login)", None, ok("Tokens", "200"), Some("RefreshToken")) }));
    paths.insert("/api/v1/auth/logout".into(), json!({ "post":
        op("End the login a refresh token belongs to", None, json!({ "204": { "description": "logged out" } }), Some("RefreshToken")) }));
    paths.insert("/api/v1/auth/password".into(), json!({ "post":
        op("Change your password (ends every session)", Some(""), json!({ "204": { "description": "changed" } }), Some("ChangePassword")) }));
    paths.insert(
        "/api/v1/me".into(),
        json!({
        "get": op("Who am I", Some(""), ok("User", "200"), None),
        "patch": op("Update your own profile", Some(""), ok("User", "200"), Some("UpdateMe")) }),
    );
    resource(
        &mut paths,
        "/api/v1/merchants",
        "Merchant",
        "merchant:manage",
        "merchant:manage",
        &["q", "status"],
        true,
    );
    resource(
        &mut paths,
        "/api/v1/venues",
        "Venue",
        "venue:read",
        "venue:write",
        &["q", "merchant_id"],
        true,
    );
    resource(
        &mut paths,
        "/api/v1/gateways",
        "Gateway",
        "device:read",
        "device:write",
        &["q", "merchant_id", "venue_id", "status"],
        true,
    );
    resource(
        &mut paths,
        "/api/v1/locks",
        "Lock",
        "device:read",
        "device:write",
        &["q", "merchant_id", "venue_id", "gateway_id", "status"],
        true,
    );
    resource(
        &mut paths,
        "/api/v1/users",
        "User",
        "user:manage",
        "user:manage",
        &["q", "merchant_id", "role"],
        true,
    );
    resource(
        &mut paths,
        "/api/v1/enrollment-codes",
        "EnrollmentCode",
        "device:read",
        "device:write",
        &["merchant_id", "venue_id"],
        false,
    );

    orders_paths(&mut paths);
    link_paths(&mut paths);

    let s = |t: &str| json!({ "type": t });
    let ns = json!({ "type": ["string", "null"] });
    let ni = json!({ "type": ["integer", "null"] });
    let plan_in = obj(
        json!({ "name": s("string"), "duration_minutes": { "type": "integer", "minimum": 1 }, "price_fen": { "type": "integer", "minimum": 1 } }),
        &["name", "duration_minutes", "price_fen"],
    );
    let schemas = json!({
        "Error": { "type": "object", "properties": { "error": obj(json!({
            "code": s("string"), "message": s("string"), "details": {} }), &["code", "message", "details"]) }, "required": ["error"] },
        "Login": obj(json!({ "login": s("string"), "password": s("string") }), &["login", "password"]),
        "RefreshToken": obj(json!({ "refresh_token": s("string") }), &["refresh_token"]),
        "ChangePassword": obj(json!({ "current_password": s("string"), "new_password": { "type": "string", "minLength": 8 } }), &["current_password", "new_password"]),
        "Tokens": { "type": "object", "properties": {
            "access_token": s("string"), "token_type": s("string"), "expires_in": s("integer"),
            "refresh_token": s("string"), "refresh_expires_in": s("integer"), "user": { "$ref": "#/components/schemas/User" } } },
        "User": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": ns, "username": s("string"), "phone": ns, "display_name": s("string"),
            "role": { "enum": ["platform_admin", "merchant_owner", "merchant_staff", "technician"] },
            "created_at": s("integer"), "updated_at": s("integer") } },
        "CreateUser": obj(json!({ "username": s("string"), "password": s("string"), "display_name": s("string"),
            "role": s("string"), "phone": ns, "merchant_id": { "type": ["string", "null"], "description": "platform admins only" } }),
            &["username", "password", "display_name", "role"]),
        "UpdateUser": obj(json!({ "display_name": s("string"), "phone": s("string"), "password": s("string") }), &[]),
        "UpdateMe": obj(json!({ "display_name": s("string"), "phone": s("string") }), &[]),
        "UserPage": page_of("User"),
        "Merchant": { "type": "object", "properties": {
            "id": s("string"), "name": s("string"), "contact_phone": ns,
            "commission_bp": { "type": "integer", "minimum": 0, "maximum": 10000 },
            "status": { "enum": ["active", "suspended"] }, "created_at": s("integer"), "updated_at": s("integer") } },
        "CreateMerchant": obj(json!({ "name": s("string"), "contact_phone": ns, "commission_bp": { "type": "integer", "minimum": 0, "maximum": 10000 } }), &["name", "commission_bp"]),
        "UpdateMerchant": obj(json!({ "name": s("string"), "contact_phone": s("string"), "commission_bp": { "type": "integer", "minimum": 0, "maximum": 10000 }, "status": { "enum": ["active", "suspended"] } }), &[]),
        "MerchantPage": page_of("Merchant"),
        "Venue": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "name": s("string"), "address": s("string"),
            "created_at": s("integer"), "updated_at": s("integer") } },
        "CreateVenue": obj(json!({ "name": s("string"), "address": s("string"), "merchant_id": { "type": "string", "description": "platform admins only" } }), &["name"]),
        "UpdateVenue": obj(json!({ "name": s("string"), "address": s("string") }), &[]),
        "VenuePage": page_of("Venue"),
        "Gateway": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "venue_id": s("string"), "name": s("string"),
            "status": { "enum": ["pending", "enrolled", "retired"] }, "public_key": ns, "enrolled_at": ni, "last_seen_at": ni,
            "online": s("boolean"), "agent_version": ns, "outbox_pending": ni, "outbox_oldest_age_s": ni,
            "created_at": s("integer"), "updated_at": s("integer") } },
        "CreateGateway": obj(json!({ "venue_id": s("string"), "name": s("string") }), &["venue_id", "name"]),
        "UpdateGateway": obj(json!({ "venue_id": s("string"), "name": s("string") }), &[]),
        "GatewayPage": page_of("Gateway"),
        "PricePlanInput": plan_in,
        "PricePlan": { "type": "object", "properties": { "id": s("string"), "name": s("string"), "duration_minutes": s("integer"), "price_fen": s("integer") } },
        "Lock": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "venue_id": s("string"), "gateway_id": s("string"),
            "name": s("string"), "device_code": s("string"), "bus_address": { "type": "integer", "minimum": 1, "maximum": 247 },
            "qr_code": s("string"), "qr_payload": s("string"), "status": { "enum": ["unknown", "online", "offline", "disabled"] },
            "price_plans": { "type": "array", "items": { "$ref": "#/components/schemas/PricePlan" } },
            "door_closed": { "type": ["boolean", "null"] }, "locked": { "type": ["boolean", "null"] },
            "fw_version": ns, "last_heartbeat_at": ni,
            "created_at": s("integer"), "updated_at": s("integer") } },
        "CreateLock": obj(json!({ "gateway_id": s("string"), "device_code": s("string"),
            "bus_address": { "type": "integer", "minimum": 1, "maximum": 247 }, "name": s("string"),
            "price_plans": { "type": "array", "items": { "$ref": "#/components/schemas/PricePlanInput" } } }),
            &["gateway_id", "device_code", "bus_address"]),
        "UpdateLock": obj(json!({ "gateway_id": s("string"), "bus_address": { "type": "integer", "minimum": 1, "maximum": 247 },
            "name": s("string"), "status": { "enum": ["disabled", "unknown"] },
            "price_plans": { "type": "array", "items": { "$ref": "#/components/schemas/PricePlanInput" } } }), &[]),
        "LockPage": page_of("Lock"),
        "EnrollmentCode": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "venue_id": s("string"),
            "status": { "enum": ["active", "used", "expired"] }, "expires_at": s("integer"), "used_at": ni,
            "used_by_gateway": ns, "gateway_id": ns, "created_by": s("string"), "created_at": s("integer"),
            "code": { "type": "string", "description": "only in the create response" } } },
        "CreateEnrollmentCode": obj(json!({ "venue_id": s("string"), "ttl_minutes": { "type": "integer", "minimum": 1, "maximum": 10080 },
            "gateway_id": { "type": "string", "description": "re-enroll this gateway of the venue instead of creating one" } }), &["venue_id"]),
        "TrustedKey": { "type": "object", "properties": { "key_id": s("integer"), "public_key": s("string"), "not_after_ms": ni } },
        "EnrollRequest": obj(json!({ "code": s("string"), "public_key": { "type": "string", "description": "base64url Ed25519 public key (32 bytes)" },
            "pop": { "type": "string", "description": "base64url Ed25519 signature over \"DMR-ENROLL/1\\0\" + normalized code + the 32 public key bytes" },
            "name": s("string"), "agent_version": s("string") }), &["code", "public_key", "pop"]),
        "EnrollResponse": { "type": "object", "properties": {
            "gateway_id": s("string"), "merchant_id": s("string"), "venue_id": s("string"),
            "trusted_keys": { "type": "array", "items": { "$ref": "#/components/schemas/TrustedKey" } },
            "mqtt": { "type": "object", "properties": { "url": s("string"), "username": s("string"), "password": { "type": "string", "description": "shown once" } } },
            "sync_url": s("string"),
            "locks": { "type": "array", "items": { "type": "object", "properties": { "lock_id": s("string"), "addr": s("integer"), "name": s("string") } } },
            "config": { "type": "object", "properties": { "version": s("integer"), "heartbeat_interval_s": s("integer"), "token_skew_s": s("integer") } } } },
        "EventsRequest": obj(json!({ "messages": { "type": "array", "maxItems": 500, "items": { "type": "string", "description": "compact JWS, as published over MQTT" } } }), &["messages"]),
        "UnlockSent": { "type": "object", "properties": {
            "command_id": { "type": "string", "format": "uuid" }, "gateway_id": { "type": "string", "format": "uuid" },
            "token_id": { "type": "string", "format": "uuid" }, "exp_ms": { "type": "integer" },
            "status": { "type": "string", "enum": ["sent"] } } },
        "Command": { "type": "object", "properties": {
            "id": { "type": "string", "format": "uuid" }, "gateway_id": { "type": "string" },
            "lock_id": { "type": ["string", "null"] }, "op": { "type": "string" }, "body": { "type": "object" },
            "key_id": { "type": "integer" }, "exp_ms": { "type": "integer" },
            "status": { "type": "string", "enum": ["sent", "acked", "expired"] },
            "result": { "type": ["string", "null"], "description": "the gateway's result code (ok, used_up, lock_unreachable, ...)" },
            "latency_ms": { "type": ["integer", "null"] }, "created_by": { "type": ["string", "null"] },
            "created_at": { "type": "integer" }, "acked_at": { "type": ["integer", "null"] } } },
        "CommandPage": page_of("Command"),
        "EventsResponse": { "type": "object", "properties": { "results": { "type": "array", "items": { "type": "object", "properties": {
            "id": ns, "status": { "enum": ["applied", "duplicate", "rejected"] }, "error": s("string") } } } } },
        "Alarm": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "gateway_id": s("string"), "lock_id": ns, "kind": s("string"),
            "detail": ns, "raised_at": s("integer"), "cleared_at": ni, "acked_at": ni, "acked_by": ns, "created_at": s("integer") } },
        "AlarmPage": page_of("Alarm"),
        "EnrollmentCodePage": page_of("EnrollmentCode"),
        "BrokerAuthRequest": { "type": "object", "properties": {
            "clientid": s("string"), "username": { "type": "string", "description": "dmr-cloud or gw:<gateway uuid>" },
            "password": s("string"), "peerhost": s("string") } },
        "BrokerAuthResult": { "type": "object", "properties": {
            "result": { "enum": ["allow", "deny"] }, "is_superuser": s("boolean") }, "required": ["result", "is_superuser"] },
        "BrokerAclRequest": { "type": "object", "properties": {
            "clientid": s("string"), "username": s("string"), "topic": s("string"),
            "action": { "enum": ["publish", "subscribe"] } }, "required": ["topic", "action"] },
        "BrokerAclResult": { "type": "object", "properties": { "result": { "enum": ["allow", "deny"] } }, "required": ["result"] },
    });
    let mut schemas = schemas;
    if let (Some(all), Value::Object(more)) = (schemas.as_object_mut(), orders_schemas()) {
        all.extend(more);
    }

    json!({
        "openapi": "3.1.0",
        "info": { "title": "Dumeiren cloud API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Console API of dmr-cloud. Errors are always {\"error\":{\"code\",\"message\",\"details\"}}. Times are Unix milliseconds, money is fen." },
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "gateway": { "type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "DMR-Gateway <compact JWS signed by the gateway key> (docs/protocol.md §6)" },
                "hookSecret": { "type": "apiKey", "in": "header", "name": "X-DMR-Hook-Secret" },
            },
            "schemas": schemas,
        },
    })
}

fn query_params(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({ "name": n, "in": "query", "schema": { "type": "string" } }))
            .collect(),
    )
}

/// Orders, payments and money (see `crate::orders`).
fn orders_paths(paths: &mut serde_json::Map<String, Value>) {
    let public =
        |summary: &str, schema: &str, status: &str| op(summary, None, ok(schema, status), None);
    let key = query_params(&["key"]);
    paths.insert("/api/v1/public/locks/{qr_code}".into(), json!({
        "parameters": [{ "name": "qr_code", "in": "path", "required": true, "schema": { "type": "string" } }],
        "get": public("A lock by its QR code: venue, state, price plans (no login)", "PublicLock", "200") }));
    let mut create = op(
        "Place an order (no login). Headers: Idempotency-Key (a double tap makes one order; the replay answers 200), X-Device-Session (groups my orders). The amount comes from the plan.",
        None,
        ok("CreatedOrder", "201"),
        Some("CreatePublicOrder"),
    );
    create["parameters"] = json!([
        { "name": "Idempotency-Key", "in": "header", "schema": { "type": "string", "minLength": 8, "maxLength": 128 } },
        { "name": "X-Device-Session", "in": "header", "schema": { "type": "string", "minLength": 8, "maxLength": 128 } }]);
    create["responses"]["409"] = error_response(
        "the lock is in use by another order, or the key was used for another order",
    );
    create["responses"]["503"] = error_response("the payment provider is unavailable");
    paths.insert("/api/v1/public/orders".into(), json!({ "post": create }));
    let mut get = public(
        "An order (access key required; a wrong key is 404)",
        "PublicOrder",
        "200",
    );
    get["parameters"] = key.clone();
    paths.insert(
        "/api/v1/public/orders/{id}".into(),
        json!({ "parameters": id_param(), "get": get }),
    );
    let mut ev = op(
        "The order as server-sent events (`event: order`, data PublicOrder) until a final status",
        None,
        json!({ "200": { "description": "text/event-stream", "content": { "text/event-stream": {} } } }),
        None,
    );
    ev["parameters"] = key.clone();
    paths.insert(
        "/api/v1/public/orders/{id}/events".into(),
        json!({ "parameters": id_param(), "get": ev }),
    );
    let mut tok = public(
        "The signed unlock token to show as a QR code when the gateway is offline",
        "OfflineToken",
        "200",
    );
    tok["parameters"] = key;
    tok["responses"]["409"] = error_response("no token in this state");
    paths.insert(
        "/api/v1/public/orders/{id}/offline-token".into(),
        json!({ "parameters": id_param(), "get": tok }),
    );
    let mut mine = public(
        "The latest 50 orders of this X-Device-Session, with their access keys",
        "MyOrders",
        "200",
    );
    mine["parameters"] = json!([{ "name": "X-Device-Session", "in": "header", "required": true, "schema": { "type": "string" } }]);
    paths.insert("/api/v1/public/my/orders".into(), json!({ "get": mine }));
    let session = json!([{ "name": "X-Device-Session", "in": "header", "required": true, "schema": { "type": "string" } }]);
    let mut wx_start = op(
        "Start WeChat sign-in (OAuth snsapi_base) for this X-Device-Session: the authorize URL to send the browser to (see docs/orders.md)",
        None,
        ok("WechatOAuthStarted", "200"),
        Some("WechatOAuthStart"),
    );
    wx_start["parameters"] = session.clone();
    wx_start["responses"]["400"] =
        error_response("wechat_oauth_not_configured: no wechatpay.app_secret on this server");
    paths.insert(
        "/api/v1/public/wechat/oauth".into(),
        json!({ "post": wx_start }),
    );
    paths.insert("/api/v1/public/wechat/oauth/callback".into(), json!({
        "get": { "summary": "WeChat sends the browser here: the state is consumed, the code exchanged for the openid, which is bound to the device session; 302 to /h5/l/{qr_code}?wechat=1",
            "parameters": [
                { "name": "code", "in": "query", "schema": { "type": "string" } },
                { "name": "state", "in": "query", "schema": { "type": "string" } }],
            "responses": { "302": { "description": "bound; back to the lock page" },
                "400": error_response("wechat_oauth_state_invalid (unknown, expired or used state), wechat_oauth_code_invalid, wechat_oauth_denied"),
                "502": error_response("wechat_oauth_failed: WeChat answered an error"),
                "503": error_response("wechat_oauth_unavailable: WeChat did not answer in time") } } }));
    let mut wx_id = public(
        "Whether WeChat sign-in is available and this X-Device-Session has an openid bound",
        "WechatIdentity",
        "200",
    );
    wx_id["parameters"] = session;
    paths.insert(
        "/api/v1/public/wechat/identity".into(),
        json!({ "get": wx_id }),
    );
    paths.insert("/api/v1/payments/notify/{provider}".into(), json!({
        "parameters": [{ "name": "provider", "in": "path", "required": true, "schema": { "enum": ["sandbox", "wechatpay"] } }],
        "post": { "summary": "Payment provider notification: verified on the raw body, applied once, answered 204 only after it is durably applied",
            "requestBody": { "content": { "application/json": {} } },
            "responses": { "204": { "description": "applied (or already applied)" },
                "400": error_response("refused: bad signature, stale timestamp, missing headers, signature probe, amount/merchant/app mismatch; nothing changed"),
                "404": error_response("no such provider"), "413": error_response("body too large") } } }));
    let html = json!({ "200": { "description": "HTML page (zh-CN)", "content": { "text/html": {} } }, "404": error_response("no such sandbox payment") });
    paths.insert("/pay/sandbox/{payment_id}".into(), json!({
        "parameters": [{ "name": "payment_id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }],
        "get": { "summary": "Sandbox payment page (plays the payer)", "responses": html.clone() },
        "post": { "summary": "Sandbox: pay, and notify (query: duplicates=N, delay_ms=N, fail=bad_signature|drop|crash)",
            "parameters": query_params(&["duplicates", "delay_ms", "fail"]), "responses": html } }));
    let mut list = op(
        "List orders",
        Some("order:read"),
        ok("OrderPage", "200"),
        None,
    );
    list["parameters"] = list_params(&[
        "q",
        "status",
        "merchant_id",
        "venue_id",
        "lock_id",
        "from",
        "to",
    ]);
    paths.insert("/api/v1/orders".into(), json!({ "get": list }));
    let mut csv = op(
        "Orders as CSV (same filters, at most 10 000 rows)",
        Some("order:read"),
        json!({ "200": { "description": "CSV", "content": { "text/csv": {} } } }),
        None,
    );
    csv["parameters"] = query_params(&[
        "q",
        "status",
        "merchant_id",
        "venue_id",
        "lock_id",
        "from",
        "to",
        "sort",
    ]);
    paths.insert("/api/v1/orders.csv".into(), json!({ "get": csv }));
    paths.insert("/api/v1/orders/{id}".into(), json!({ "parameters": id_param(),
        "get": op("An order with its transitions, payments, refunds and unlock evidence", Some("order:read"), ok("OrderDetail", "200"), None) }));
    let mut refund = op(
        "Refund (all that is left unless amount_fen is given); reason required",
        Some("order:refund"),
        ok("OrderDetail", "200"),
        Some("RefundRequest"),
    );
    refund["responses"]["409"] = error_response("nothing paid, or already fully refunded");
    paths.insert(
        "/api/v1/orders/{id}/refund".into(),
        json!({ "parameters": id_param(), "post": refund }),
    );
    let mut st = op(
        "Daily settlement statements (Asia/Shanghai days)",
        Some("settlement:read"),
        ok("SettlementPage", "200"),
        None,
    );
    st["parameters"] = query_params(&["page", "per_page", "merchant_id", "from", "to"]);
    paths.insert("/api/v1/settlements".into(), json!({ "get": st }));
    paths.insert(
        "/api/v1/settlements/{id}/csv".into(),
        json!({ "parameters": id_param(),
        "get": op("A statement as CSV (totals, then one line per order)", Some("settlement:read"),
            json!({ "200": { "description": "CSV", "content": { "text/csv": {} } } }), None) }),
    );
    let mut rep = op(
        "Reconciliation reports (provider bill × payments × unlock events)",
        Some("settlement:read"),
        ok("ReportPage", "200"),
        None,
    );
    rep["parameters"] = query_params(&["page", "per_page", "merchant_id", "from", "to"]);
    paths.insert(
        "/api/v1/reconciliation/reports".into(),
        json!({ "get": rep }),
    );
    let mut items = op(
        "The items one reconciliation report found (paged; kind filters)",
        Some("settlement:read"),
        ok("ReportItemPage", "200"),
        None,
    );
    items["parameters"] = query_params(&["page", "per_page", "kind"]);
    paths.insert(
        "/api/v1/reconciliation/reports/{id}/items".into(),
        json!({ "parameters": id_param(), "get": items }),
    );
    firmware_paths(paths);
    paths.insert("/api/v1/dashboard/summary".into(), json!({
        "get": op("Today's revenue, orders and refunds; the last 30 days (and 7 for older clients); lock, alarm and busiest-lock figures (Asia/Shanghai days)", Some("order:read"), ok("DashboardSummary", "200"), None) }));
}

fn firmware_paths(paths: &mut serde_json::Map<String, Value>) {
    let mut list = op(
        "Firmware releases, newest version first (platform admins and technicians)",
        Some("firmware:download"),
        ok("FirmwareReleasePage", "200"),
        None,
    );
    list["parameters"] = query_params(&["page", "per_page", "hardware", "status"]);
    let mut upload = op(
        "Publish a vendor-signed image (the file is the request body). Refused with 422 \
         naming what is wrong: not an image, unknown hardware, version 0.0.0 or not the \
         expected one, length, untrusted key, bad signature, payload hash",
        Some("firmware:manage"),
        ok("FirmwareRelease", "201"),
        None,
    );
    upload["parameters"] = query_params(&["notes", "version"]);
    upload["requestBody"] = json!({ "required": true,
        "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });
    upload["responses"]["409"] =
        error_response("this version for this hardware was already published");
    upload["responses"]["413"] = error_response("the image is over firmware.max_image_bytes");
    paths.insert(
        "/api/v1/firmware-releases".into(),
        json!({ "get": list, "post": upload }),
    );
    paths.insert(
        "/api/v1/firmware-releases/{id}".into(),
        json!({ "parameters": id_param(),
            "get": op("One firmware release", Some("firmware:download"), ok("FirmwareRelease", "200"), None) }),
    );
    let mut image = op(
        "The signed image file, to flash with `dmr-tech flash --file`; X-Content-SHA256 is its hash",
        Some("firmware:download"),
        json!({ "200": { "description": "the image", "content": { "application/octet-stream": {} } } }),
        None,
    );
    image["responses"]["409"] = error_response("the release was withdrawn");
    paths.insert(
        "/api/v1/firmware-releases/{id}/image".into(),
        json!({ "parameters": id_param(), "get": image }),
    );
    let mut withdraw = op(
        "Withdraw a release (soft: the row and its version number stay); reason required",
        Some("firmware:manage"),
        ok("FirmwareRelease", "200"),
        Some("WithdrawRequest"),
    );
    withdraw["responses"]["409"] = error_response("already withdrawn");
    paths.insert(
        "/api/v1/firmware-releases/{id}/withdraw".into(),
        json!({ "parameters": id_param(), "post": withdraw }),
    );
}

fn orders_schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let ns = json!({ "type": ["string", "null"] });
    let ni = json!({ "type": ["integer", "null"] });
    let status = json!({ "enum": ["created", "paid", "unlocking", "unlocked", "completed", "expired", "unlock_failed", "refunding", "refunded", "cancelled"] });
    let public_order = json!({ "type": "object", "properties": {
        "id": s("string"), "lock_name": s("string"), "venue_name": s("string"), "plan_name": s("string"),
        "duration_minutes": s("integer"), "amount_fen": s("integer"), "refunded_fen": s("integer"), "status": status,
        "created_at": s("integer"), "pay_deadline_at": s("integer"), "paid_at": ni, "unlocked_at": ni, "ends_at": ni, "updated_at": s("integer") } });
    json!({
        "PublicLock": { "type": "object", "properties": {
            "qr_code": s("string"), "name": s("string"),
            "venue": { "type": "object", "properties": { "name": s("string"), "address": s("string") } },
            "status": s("string"), "available": s("boolean"),
            "price_plans": { "type": "array", "items": { "$ref": "#/components/schemas/PricePlan" } },
            "providers": { "type": "array", "items": s("string") },
            "wechat_oauth": s("boolean") } },
        "WechatOAuthStart": obj(json!({ "qr_code": s("string") }), &["qr_code"]),
        "WechatOAuthStarted": { "type": "object", "properties": {
            "authorize_url": s("string"), "expires_at": s("integer") } },
        "WechatIdentity": { "type": "object", "properties": {
            "oauth": s("boolean"), "bound": s("boolean") } },
        "CreatePublicOrder": obj(json!({ "qr_code": s("string"), "plan_id": s("string"),
            "provider": { "enum": ["sandbox", "wechat"] }, "openid": s("string") }), &["qr_code", "plan_id"]),
        "PublicOrder": public_order,
        "CreatedOrder": { "type": "object", "properties": {
            "order": { "$ref": "#/components/schemas/PublicOrder" }, "access_key": s("string"),
            "payment": { "type": "object", "properties": { "provider": s("string"), "redirect_url": s("string"),
                "code_url": s("string"),
                "jsapi": { "type": "object", "additionalProperties": s("string") } } } } },
        "OfflineToken": { "type": "object", "properties": { "token": s("string"), "expires_at": s("integer") } },
        "MyOrders": { "type": "object", "properties": { "items": { "type": "array", "items": { "$ref": "#/components/schemas/PublicOrder" } } } },
        "Order": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "venue_id": s("string"), "lock_id": s("string"),
            "gateway_id": s("string"), "plan_id": s("string"), "plan_name": s("string"), "duration_minutes": s("integer"),
            "amount_fen": s("integer"), "refunded_fen": s("integer"), "status": status, "provider": s("string"),
            "pay_deadline_at": s("integer"), "unlock_deadline_at": ni, "token_id": ns, "token_not_after": ni,
            "unlock_command_id": ns, "door_opened_at": ni, "review_reason": ns, "created_at": s("integer"),
            "paid_at": ni, "unlocking_at": ni, "unlocked_at": ni, "completed_at": ni, "ended_at": ni, "updated_at": s("integer") } },
        "OrderPage": page_of("Order"),
        "OrderDetail": { "allOf": [{ "$ref": "#/components/schemas/Order" }, { "type": "object", "properties": {
            "transitions": { "type": "array", "items": { "type": "object" } },
            "payments": { "type": "array", "items": { "type": "object" } },
            "refunds": { "type": "array", "items": { "type": "object" } },
            "unlock_events": { "type": "array", "items": { "type": "object" } } } }] },
        "RefundRequest": obj(json!({ "reason": { "type": "string", "minLength": 1, "maxLength": 200 },
            "amount_fen": { "type": "integer", "minimum": 1 } }), &["reason"]),
        "Settlement": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": s("string"), "day": s("string"), "commission_bp": s("integer"),
            "orders_count": s("integer"), "gross_fen": s("integer"), "refunds_fen": s("integer"),
            "commission_fen": s("integer"), "net_fen": s("integer"), "status": { "enum": ["issued"] }, "created_at": s("integer") } },
        "SettlementPage": page_of("Settlement"),
        "Report": { "type": "object", "properties": {
            "id": s("string"), "merchant_id": ns, "provider": s("string"), "day": s("string"),
            "items_count": s("integer"), "summary": s("string"), "created_at": s("integer") } },
        "ReportPage": page_of("Report"),
        "ReportItem": { "type": "object", "properties": {
            "id": s("string"), "report_id": s("string"),
            "kind": { "enum": ["missing_notification", "unknown_payment", "amount_mismatch", "paid_never_opened", "opened_without_payment"] },
            "order_id": ns, "out_trade_no": ns, "detail": s("string") } },
        "ReportItemPage": page_of("ReportItem"),
        "FirmwareRelease": { "type": "object", "properties": {
            "id": s("string"), "hardware": s("integer"), "version": s("string"),
            "size_bytes": s("integer"), "payload_len": s("integer"),
            "payload_sha256": s("string"), "image_sha256": s("string"), "key_id": s("integer"),
            "notes": s("string"), "status": { "enum": ["published", "withdrawn"] },
            "created_by": s("string"), "created_by_name": ns, "created_at": s("integer"),
            "withdrawn_by": ns, "withdrawn_by_name": ns, "withdrawn_at": ni, "withdrawn_reason": ns } },
        "FirmwareReleasePage": page_of("FirmwareRelease"),
        "WithdrawRequest": obj(json!({ "reason": { "type": "string", "minLength": 1, "maxLength": 500 } }), &["reason"]),
        "DashboardSummary": { "type": "object", "properties": {
            "today_revenue_fen": s("integer"), "today_orders": s("integer"),
            "today_refunds_fen": s("integer"),
            "revenue_by_day": { "type": "array", "items": { "type": "object", "properties": { "day": s("string"), "revenue_fen": s("integer") } } },
            "days": { "type": "array", "description": "the last 30 Asia/Shanghai days, oldest first, today included",
                "items": { "type": "object", "properties": { "day": s("string"), "revenue_fen": s("integer"), "orders": s("integer") } } },
            "locks_online": s("integer"), "locks_offline": s("integer"), "open_alarms": s("integer"),
            "busiest_locks": { "type": "array", "description": "top 5 locks by orders paid in the last 30 days (for a platform admin, across all merchants, ranked at most once a minute)",
                "items": { "type": "object", "properties": { "lock_id": s("string"), "name": s("string"), "orders": s("integer"), "revenue_fen": s("integer") } } } } },
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}
