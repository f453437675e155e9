//! Fixtures for the steps the order scenarios (orders.rs, wechatpay.rs, wechat_oauth.rs)
//! repeat: the app whose unlock commands are recorded, a paid order, the gateway reporting
//! an unlock or a door change for a tenant's lock, a door cycle, a merchant's refund, and
//! the phone's public GETs (the lock page, the offline token). Each is a short sequence of
//! the helpers in `orders::support`, written once so a scenario reads as the story it
//! tests. They assert only what every caller needs to go on (the payment page answered
//! 200); each scenario keeps its own assertions about what follows.

use dmr_protocol::message::{DoorChange, Presenter, ResultCode};
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{DbKind, Tenant, TestApp, World, seed_world};
use crate::orders::support::{
    Recorder, door_event, gateway_event, new_order, order_status, pay, unlock_event,
};

/// The app with the two seeded tenants, its unlock commands recorded instead of sent (there
/// is no gateway link in these tests): where most order scenarios start.
pub async fn spawn_order_world(kind: &DbKind) -> (TestApp, World) {
    let app = TestApp::spawn(kind).await;
    let w = seed_world(&app).await;
    app.state.orders.set_dispatcher(Recorder::new(false));
    (app, w)
}

/// An order on the tenant's lock that the payer paid on the sandbox page:
/// (order id, access key). A scenario that pays in its own way (a failure mode of the
/// sandbox, a second payment) uses `new_order` and `pay` itself.
pub async fn paid_order(app: &TestApp, t: &Tenant) -> (String, String) {
    let (id, key, payment) = new_order(app, t).await;
    assert_eq!(
        pay(app, &payment, "").await,
        StatusCode::OK,
        "paying order {id}"
    );
    (id, key)
}

/// The order job's unlock timeout (30 s by default) for an order in `unlocking`: not yet
/// 10 s on, then at 31 s it fails the order over (`unlock_failed`); the caller checks the
/// refund and the command that follow. Returns the time the job rounds counted from.
pub async fn unlock_times_out(app: &TestApp, id: &str) -> i64 {
    use dmr_cloud::orders::jobs::run_once;
    let t0 = dmr_cloud::db::now_ms();
    let r = run_once(&app.state, t0 + 10_000).await.unwrap();
    assert_eq!(r.unlock_timeouts, 0, "no timeout 10 s on");
    let r = run_once(&app.state, t0 + 31_000).await.unwrap();
    assert_eq!(r.unlock_timeouts, 1, "the unlock timeout at 31 s");
    assert_eq!(order_status(app, id).await, "unlock_failed");
    t0
}

/// The tenant's gateway reports an unlock of its lock for `order`.
pub async fn unlock_reported(
    app: &TestApp,
    t: &Tenant,
    order: &str,
    result: ResultCode,
    via: Presenter,
) {
    gateway_event(
        app,
        &t.gateway_id,
        unlock_event(&t.lock_id, order, result, via),
    )
    .await;
}

/// The tenant's gateway reports that its lock opened for `order` (the cloud presented it).
pub async fn lock_opened(app: &TestApp, t: &Tenant, order: &str) {
    unlock_reported(app, t, order, ResultCode::Ok, Presenter::Cloud).await;
}

/// A paid order whose lock the gateway reports opened: (order id, access key).
pub async fn opened_order(app: &TestApp, t: &Tenant) -> (String, String) {
    let (id, key) = paid_order(app, t).await;
    lock_opened(app, t, &id).await;
    (id, key)
}

/// The tenant's gateway reports one door change of its lock, timed now.
pub async fn door(app: &TestApp, t: &Tenant, change: DoorChange) {
    gateway_event(app, &t.gateway_id, door_event(&t.lock_id, change)).await;
}

/// The tenant's gateway reports a full door cycle: opened, then closed.
pub async fn door_cycle(app: &TestApp, t: &Tenant) {
    door(app, t, DoorChange::Opened).await;
    door(app, t, DoorChange::Closed).await;
}

/// A paid order whose lock opened and whose door then opened and closed.
pub async fn completed_order(app: &TestApp, t: &Tenant) -> (String, String) {
    let (id, key) = opened_order(app, t).await;
    door_cycle(app, t).await;
    (id, key)
}

/// The phone's lock page: GET /api/v1/public/locks/{qr}, without credentials.
pub async fn public_lock(app: &TestApp, qr: &str) -> (StatusCode, Value) {
    app.call(
        reqwest::Method::GET,
        &format!("/api/v1/public/locks/{qr}"),
        None,
        None,
    )
    .await
}

/// The phone's offline token for an order, by its access key.
pub async fn offline_token(app: &TestApp, id: &str, key: &str) -> (StatusCode, Value) {
    app.call(
        reqwest::Method::GET,
        &format!("/api/v1/public/orders/{id}/offline-token?key={key}"),
        None,
        None,
    )
    .await
}

/// A merchant's refund of an order: POST /api/v1/orders/{id}/refund as `who` with `body`.
pub async fn merchant_refund(
    app: &TestApp,
    who: &str,
    id: &str,
    body: Value,
) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/orders/{id}/refund"), who, body)
        .await
}
