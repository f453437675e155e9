#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Client flows against a local HTTP server that plays WeChat Pay.
//!
//! The server is a test double of an external service that cannot be reached from here: it
//! checks every `Authorization` signature with the merchant public key, answers with bodies
//! signed like WeChat Pay signs them (WeChat Pay public key or platform certificate), and can
//! be told to fail, hang, mis-sign or corrupt a bill so that retries, timeouts, the circuit
//! breaker and hash checks are exercised.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dmr_wechatpay::{
    BillType, BreakerConfig, BreakerState, Error, PrepayRequest, PublicKeyConfig, RefundRequest,
    RefundStatus, RetryPolicy, TradeState, WechatPayClient, WechatPayConfig,
};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/vectors.json")).unwrap()
}

fn key(v: &Value, name: &str) -> String {
    v["keys"][name].as_str().unwrap().to_owned()
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
    auth_ok: bool,
    wechatpay_serial: Option<String>,
}

#[derive(Default)]
struct Behaviour {
    /// Answer this many requests with 500 SYSTEM_ERROR.
    fail_remaining: u32,
    /// Never answer.
    hang: bool,
    /// Corrupt the response signature.
    bad_signature: bool,
    /// Leave out the signature headers.
    unsigned: bool,
    /// Sign with the platform certificate instead of the WeChat Pay public key.
    sign_with_certificate: bool,
    /// Serve a bill whose content does not match the announced hash.
    corrupt_bill: bool,
    /// Announce a download URL on another host.
    foreign_download_url: bool,
}

#[derive(Default)]
struct Data {
    seen: Vec<Seen>,
    orders: HashMap<String, Value>,
    refunds: HashMap<String, Value>,
}

struct Double {
    merchant: VerifyingKey<Sha256>,
    pubkey_signer: SigningKey<Sha256>,
    pubkey_id: String,
    cert_signer: SigningKey<Sha256>,
    cert_serial: String,
    bill_text: String,
    certificates_body: String,
    addr: Mutex<String>,
    behaviour: Mutex<Behaviour>,
    data: Mutex<Data>,
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

impl Double {
    fn check_authorization(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(params) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
            return false;
        };
        let mut fields = HashMap::new();
        for part in params.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                return false;
            };
            fields.insert(k.trim().to_owned(), v.trim_matches('"').to_owned());
        }
        let (Some(ts), Some(nonce), Some(sig), Some(mchid), Some(serial)) = (
            fields.get("timestamp"),
            fields.get("nonce_str"),
            fields.get("signature"),
            fields.get("mchid"),
            fields.get("serial_no"),
        ) else {
            return false;
        };
        if mchid != "1900009191" || serial.is_empty() {
            return false;
        }
        let Ok(ts_num) = ts.parse::<i64>() else {
            return false;
        };
        if (ts_num - now()).abs() > 300 {
            return false;
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        let mut message = format!("{method}\n{path}\n{ts}\n{nonce}\n").into_bytes();
        message.extend_from_slice(body);
        message.push(b'\n');
        let Ok(raw) = STANDARD.decode(sig) else {
            return false;
        };
        let Ok(signature) = Signature::try_from(raw.as_slice()) else {
            return false;
        };
        self.merchant.verify(&message, &signature).is_ok()
    }

    fn signed(&self, status: StatusCode, body: String) -> Response {
        let b = self.behaviour.lock().unwrap();
        let mut response = (status, body.clone()).into_response();
        let h = response.headers_mut();
        h.insert("Request-ID", "test-request-id".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        if b.unsigned {
            return response;
        }
        let ts = now().to_string();
        let nonce = format!("{:032x}", rand_nonce());
        let (signer, serial) = if b.sign_with_certificate {
            (&self.cert_signer, &self.cert_serial)
        } else {
            (&self.pubkey_signer, &self.pubkey_id)
        };
        let mut sig = signer
            .sign(format!("{ts}\n{nonce}\n{body}\n").as_bytes())
            .to_bytes()
            .to_vec();
        if b.bad_signature {
            sig[10] ^= 0x40;
        }
        h.insert("Wechatpay-Serial", serial.parse().unwrap());
        h.insert("Wechatpay-Timestamp", ts.parse().unwrap());
        h.insert("Wechatpay-Nonce", nonce.parse().unwrap());
        h.insert("Wechatpay-Signature", STANDARD.encode(sig).parse().unwrap());
        response
    }

    fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        self.signed(
            status,
            json!({ "code": code, "message": message }).to_string(),
        )
    }
}

fn rand_nonce() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    u128::from(N.fetch_add(1, Ordering::Relaxed)) * 0x9E37_79B9_7F4A_7C15
}

async fn handle(
    State(d): State<Arc<Double>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth_ok = d.check_authorization(&method, &uri, &headers, &body);
    let path = uri.path().to_owned();
    d.data.lock().unwrap().seen.push(Seen {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
        auth_ok,
        wechatpay_serial: headers
            .get("Wechatpay-Serial")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if !auth_ok {
        return d.error(StatusCode::UNAUTHORIZED, "SIGN_ERROR", "签名错误");
    }
    let hang = d.behaviour.lock().unwrap().hang;
    if hang {
        // The client's timeout must end this; the connection drop cancels the handler.
        std::future::pending::<()>().await;
    }
    {
        let mut b = d.behaviour.lock().unwrap();
        if b.fail_remaining > 0 {
            b.fail_remaining -= 1;
            drop(b);
            return d.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_ERROR",
                "系统错误",
            );
        }
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v3", "pay", "transactions", kind @ ("jsapi" | "native")]) => {
            let otn = json_body["out_trade_no"].as_str().unwrap_or("").to_owned();
            if json_body["amount"]["total"].as_i64().unwrap_or(0) <= 0 || otn.is_empty() {
                return d.error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "参数错误");
            }
            if *kind == "jsapi" && json_body["payer"]["openid"].as_str().is_none() {
                return d.error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "缺少payer");
            }
            d.data.lock().unwrap().orders.insert(
                otn.clone(),
                json!({
                    "appid": json_body["appid"], "mchid": json_body["mchid"], "out_trade_no": otn,
                    "trade_state": "NOTPAY", "trade_state_desc": "订单未支付",
                    "amount": { "total": json_body["amount"]["total"], "payer_currency": "CNY" },
                }),
            );
            if *kind == "jsapi" {
                d.signed(
                    StatusCode::OK,
                    json!({ "prepay_id": format!("wx{otn}") }).to_string(),
                )
            } else {
                d.signed(
                    StatusCode::OK,
                    json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={otn}") }).to_string(),
                )
            }
        }
        ("GET", ["v3", "pay", "transactions", "out-trade-no", otn]) => {
            let order = d.data.lock().unwrap().orders.get(*otn).cloned();
            match order {
                Some(order) => d.signed(StatusCode::OK, order.to_string()),
                None => d.error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
            }
        }
        ("POST", ["v3", "pay", "transactions", "out-trade-no", otn, "close"]) => {
            let mut data = d.data.lock().unwrap();
            match data.orders.get_mut(*otn) {
                Some(order) => {
                    order["trade_state"] = json!("CLOSED");
                    drop(data);
                    d.signed(StatusCode::NO_CONTENT, String::new())
                }
                None => {
                    drop(data);
                    d.error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在")
                }
            }
        }
        ("POST", ["v3", "refund", "domestic", "refunds"]) => {
            let orn = json_body["out_refund_no"].as_str().unwrap_or("").to_owned();
            let mut data = d.data.lock().unwrap();
            let n = data.refunds.len();
            let refund = data
                .refunds
                .entry(orn.clone())
                .or_insert_with(|| {
                    json!({
                        "refund_id": format!("5030000292620261126{n:010}"),
                        "out_refund_no": orn,
                        "transaction_id": "4200002926202611260000000001",
                        "out_trade_no": json_body["out_trade_no"],
                        "channel": "ORIGINAL",
                        "user_received_account": "支付用户零钱",
                        "create_time": "2026-11-26T11:00:00+08:00",
                        "status": "PROCESSING",
                        "amount": {
                            "total": json_body["amount"]["total"], "refund": json_body["amount"]["refund"],
                            "payer_total": json_body["amount"]["total"], "payer_refund": json_body["amount"]["refund"],
                            "settlement_refund": json_body["amount"]["refund"], "settlement_total": json_body["amount"]["total"],
                            "discount_refund": 0, "currency": "CNY"
                        }
                    })
                })
                .clone();
            drop(data);
            d.signed(StatusCode::OK, refund.to_string())
        }
        ("GET", ["v3", "refund", "domestic", "refunds", orn]) => {
            let refund = d.data.lock().unwrap().refunds.get(*orn).cloned();
            match refund {
                Some(r) => d.signed(StatusCode::OK, r.to_string()),
                None => d.error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "退款单不存在"),
            }
        }
        ("GET", ["v3", "bill", "tradebill"]) => {
            let b = d.behaviour.lock().unwrap();
            let host = if b.foreign_download_url {
                "http://127.0.0.2:9".to_owned()
            } else {
                d.addr.lock().unwrap().clone()
            };
            drop(b);
            let hash = hex::encode(Sha1::digest(d.bill_text.as_bytes()));
            d.signed(
                StatusCode::OK,
                json!({ "hash_type": "SHA1", "hash_value": hash, "download_url": format!("{host}/v3/billdownload/file?token=T0KEN") })
                    .to_string(),
            )
        }
        ("GET", ["v3", "certificates"]) => {
            let body = d.certificates_body.clone();
            d.signed(StatusCode::OK, body)
        }
        ("GET", ["v3", "billdownload", "file"]) => {
            // Documented: the download answer carries no WeChat Pay signature.
            let mut text = d.bill_text.clone();
            if d.behaviour.lock().unwrap().corrupt_bill {
                text = text.replace("1234.56", "1234.65");
            }
            (StatusCode::OK, text).into_response()
        }
        _ => d.error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such API in the test double",
        ),
    }
}

struct TestServer {
    double: Arc<Double>,
    base_url: String,
    task: tokio::task::JoinHandle<()>,
    v: Value,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start() -> Self {
        let v = vectors();
        let double = Arc::new(Double {
            merchant: VerifyingKey::new(
                RsaPublicKey::from_public_key_pem(&key(&v, "merchant_public_key_pem")).unwrap(),
            ),
            pubkey_signer: SigningKey::new(
                RsaPrivateKey::from_pkcs8_pem(&key(&v, "wechatpay_private_key_pem")).unwrap(),
            ),
            pubkey_id: key(&v, "wechatpay_public_key_id"),
            cert_signer: SigningKey::new(
                RsaPrivateKey::from_pkcs8_pem(&key(&v, "platform_private_key_pem")).unwrap(),
            ),
            cert_serial: key(&v, "platform_serial_no"),
            bill_text: v["bill"]["text"].as_str().unwrap().to_owned(),
            certificates_body: v["certificates"]["body"].as_str().unwrap().to_owned(),
            addr: Mutex::new(String::new()),
            behaviour: Mutex::new(Behaviour::default()),
            data: Mutex::new(Data::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        *double.addr.lock().unwrap() = base_url.clone();
        let app = Router::new().fallback(handle).with_state(double.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            double,
            base_url,
            task,
            v,
        }
    }

    fn config(&self) -> WechatPayConfig {
        let v = &self.v;
        let mut c = WechatPayConfig::new(
            key(v, "mchid"),
            key(v, "appid"),
            key(v, "merchant_serial_no"),
            key(v, "merchant_private_key_pem"),
            key(v, "api_v3_key"),
            "https://pay.example.invalid/wechatpay/notify",
        );
        c.platform_certificates_pem = vec![key(v, "platform_certificate_pem")];
        c.wechatpay_public_key = Some(PublicKeyConfig {
            id: key(v, "wechatpay_public_key_id"),
            pem: key(v, "wechatpay_public_key_pem"),
        });
        c.base_url = self.base_url.clone();
        c.request_timeout = Duration::from_secs(5);
        c.retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        };
        c.breaker = BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_millis(300),
        };
        c
    }

    fn client(&self) -> WechatPayClient {
        WechatPayClient::new(&self.config()).unwrap()
    }

    fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.double.behaviour.lock().unwrap());
    }

    fn seen(&self) -> Vec<Seen> {
        self.double.data.lock().unwrap().seen.clone()
    }
}

fn order(otn: &str) -> PrepayRequest {
    PrepayRequest {
        out_trade_no: otn.to_owned(),
        description: "都美人 门锁开锁 1次".to_owned(),
        amount_fen: 100,
        time_expire: None,
        attach: Some("lock=L1".to_owned()),
    }
}

#[tokio::test]
async fn jsapi_prepay_is_signed_and_returns_signed_phone_parameters() {
    let server = TestServer::start().await;
    let client = server.client();
    let prepay = client
        .jsapi_prepay(&order("DMR0001"), "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
        .await
        .unwrap();
    assert_eq!(prepay.prepay_id, "wxDMR0001");
    let p = &prepay.params;
    assert_eq!(p.app_id, key(&server.v, "appid"));
    assert_eq!(p.package, "prepay_id=wxDMR0001");
    assert_eq!(p.sign_type, "RSA");
    // The phone parameters verify with the merchant public key over the documented string.
    let message = format!(
        "{}\n{}\n{}\n{}\n",
        p.app_id, p.time_stamp, p.nonce_str, p.package
    );
    let sig = Signature::try_from(STANDARD.decode(&p.pay_sign).unwrap().as_slice()).unwrap();
    server
        .double
        .merchant
        .verify(message.as_bytes(), &sig)
        .unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].auth_ok);
    assert_eq!(seen[0].path, "/v3/pay/transactions/jsapi");
    assert_eq!(
        seen[0].wechatpay_serial.as_deref(),
        Some(key(&server.v, "wechatpay_public_key_id").as_str())
    );
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["amount"]["total"], 100);
    assert_eq!(body["amount"]["currency"], "CNY");
    assert_eq!(body["payer"]["openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_eq!(
        body["notify_url"],
        "https://pay.example.invalid/wechatpay/notify"
    );
    assert_eq!(body["attach"], "lock=L1");
}

#[tokio::test]
async fn native_prepay_query_and_close() {
    let server = TestServer::start().await;
    let client = server.client();
    let native = client.native_prepay(&order("DMR0002")).await.unwrap();
    assert_eq!(native.code_url, "weixin://wxpay/bizpayurl?pr=DMR0002");

    let t = client.query_order("DMR0002").await.unwrap();
    assert_eq!(t.trade_state, TradeState::NotPay);
    assert_eq!(t.amount.unwrap().total, 100);
    assert!(t.transaction_id.is_none());

    // Close answers 204 with a signed empty body.
    client.close_order("DMR0002").await.unwrap();
    assert_eq!(
        client.query_order("DMR0002").await.unwrap().trade_state,
        TradeState::Closed
    );

    let seen = server.seen();
    assert!(seen.iter().all(|s| s.auth_ok));
    assert!(seen.iter().any(|s| s.method == "GET"
        && s.path == "/v3/pay/transactions/out-trade-no/DMR0002?mchid=1900009191"));
    assert!(
        seen.iter()
            .any(|s| s.path.ends_with("/close") && s.body == r#"{"mchid":"1900009191"}"#)
    );
}

#[tokio::test]
async fn unknown_order_is_not_found_and_not_retried() {
    let server = TestServer::start().await;
    let client = server.client();
    let err = client.query_order("NOPE1").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(matches!(&err, Error::Api { status: 404, code, .. } if code == "ORDER_NOT_EXIST"));
    assert_eq!(server.seen().len(), 1, "a 404 must not be retried");
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn answers_signed_with_the_platform_certificate_are_accepted_too() {
    let server = TestServer::start().await;
    server.behave(|b| b.sign_with_certificate = true);
    let client = server.client();
    assert_eq!(
        client
            .native_prepay(&order("DMR0003"))
            .await
            .unwrap()
            .code_url,
        "weixin://wxpay/bizpayurl?pr=DMR0003"
    );
}

#[tokio::test]
async fn mis_signed_or_unsigned_answers_are_refused_without_retry() {
    let server = TestServer::start().await;
    let client = server.client();
    server.behave(|b| b.bad_signature = true);
    let err = client.native_prepay(&order("DMR0004")).await.unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    assert_eq!(server.seen().len(), 1);

    server.behave(|b| {
        b.bad_signature = false;
        b.unsigned = true;
    });
    let err = client.native_prepay(&order("DMR0004")).await.unwrap_err();
    assert!(
        matches!(err, Error::MissingHeader("Wechatpay-Signature")),
        "{err}"
    );
    assert_eq!(server.seen().len(), 2);
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn refund_retries_reuse_the_same_out_refund_no_and_body() {
    let server = TestServer::start().await;
    let client = server.client();
    let req = RefundRequest {
        out_trade_no: "DMR0005".into(),
        out_refund_no: "RF0005".into(),
        reason: Some("门锁未打开".into()),
        refund_fen: 60,
        total_fen: 100,
    };
    server.behave(|b| b.fail_remaining = 2);
    let refund = client.refund(&req).await.unwrap();
    assert_eq!(refund.status, RefundStatus::Processing);
    assert_eq!(refund.out_refund_no, "RF0005");
    assert_eq!(refund.amount.refund, 60);

    let seen: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v3/refund/domestic/refunds")
        .collect();
    assert_eq!(seen.len(), 3, "two failures then success");
    assert!(seen.iter().all(|s| s.auth_ok && s.body == seen[0].body));
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["out_refund_no"], "RF0005");
    assert_eq!(body["amount"]["refund"], 60);
    assert_eq!(body["reason"], "门锁未打开");

    // A later retry by the caller with the same key gets the same refund back.
    let again = client.refund(&req).await.unwrap();
    assert_eq!(again.refund_id, refund.refund_id);

    // Processing until queried after WeChat Pay finished it.
    server
        .double
        .data
        .lock()
        .unwrap()
        .refunds
        .get_mut("RF0005")
        .unwrap()["status"] = json!("SUCCESS");
    let queried = client.query_refund("RF0005").await.unwrap();
    assert_eq!(queried.status, RefundStatus::Success);
    assert_eq!(queried.refund_id, refund.refund_id);
    assert!(
        client
            .query_refund("RF9999")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = TestServer::start().await;
    let client = server.client();
    server.behave(|b| b.fail_remaining = 10);
    let err = client.query_order("DMR0006").await.unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: 500, code, .. } if code == "SYSTEM_ERROR"),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.seen().len(), 3, "max_attempts = 3");
}

#[tokio::test]
async fn trade_bill_is_downloaded_hash_checked_and_parsed() {
    let server = TestServer::start().await;
    let client = server.client();
    let bill = client
        .trade_bill("2026-11-25", BillType::All)
        .await
        .unwrap();
    assert_eq!(bill.rows.len(), 3);
    assert_eq!(bill.rows[1].settlement_total_fen, 123_456);
    assert_eq!(bill.rows[2].refund_fen, 100);
    assert_eq!(bill.summary.total_count, 3);
    assert_eq!(
        serde_json::to_value(&bill.rows).unwrap(),
        server.v["bill"]["rows"]
    );
    let seen = server.seen();
    assert_eq!(
        seen[0].path,
        "/v3/bill/tradebill?bill_date=2026-11-25&bill_type=ALL"
    );
    assert_eq!(seen[1].path, "/v3/billdownload/file?token=T0KEN");
    assert!(
        seen.iter().all(|s| s.auth_ok),
        "the download request is signed too"
    );

    server.behave(|b| b.corrupt_bill = true);
    let err = client
        .trade_bill("2026-11-25", BillType::All)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BillHashMismatch { .. }), "{err}");

    server.behave(|b| {
        b.corrupt_bill = false;
        b.foreign_download_url = true;
    });
    let before = server.seen().len();
    let err = client
        .trade_bill("2026-11-25", BillType::All)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("refusing to send a signed request"),
        "{err}"
    );
    assert_eq!(
        server.seen().len(),
        before + 1,
        "only the bill request, no download elsewhere"
    );

    assert!(matches!(
        client.trade_bill("25/11/2026", BillType::All).await,
        Err(Error::InvalidArgument {
            field: "bill_date",
            ..
        })
    ));
}

#[tokio::test]
async fn a_hanging_server_gives_a_timeout_after_bounded_attempts() {
    let server = TestServer::start().await;
    let mut config = server.config();
    config.request_timeout = Duration::from_millis(300);
    config.retry.max_attempts = 2;
    let client = WechatPayClient::new(&config).unwrap();
    server.behave(|b| b.hang = true);
    let started = Instant::now();
    let err = client.query_order("DMR0007").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                operation: "query_order",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(600),
        "two attempts of 300 ms: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let server = TestServer::start().await;
    let mut config = server.config();
    config.retry.max_attempts = 1;
    config.breaker = BreakerConfig {
        failure_threshold: 3,
        cool_down: Duration::from_millis(300),
    };
    let client = WechatPayClient::new(&config).unwrap();
    server.behave(|b| b.fail_remaining = u32::MAX);
    for _ in 0..3 {
        let err = client.query_order("DMR0008").await.unwrap_err();
        assert!(matches!(err, Error::Api { status: 500, .. }), "{err}");
    }
    assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
    let before = server.seen().len();
    let err = client.query_order("DMR0008").await.unwrap_err();
    assert!(
        matches!(err, Error::CircuitOpen { failures: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unavailable"));
    assert_eq!(server.seen().len(), before, "an open breaker sends nothing");

    // Provider back; after the cool-down one trial call closes the breaker again.
    server.behave(|b| b.fail_remaining = 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.breaker_state() != BreakerState::HalfOpen {
        assert!(Instant::now() < deadline, "breaker never half-opened");
        tokio::task::yield_now().await;
    }
    client.native_prepay(&order("DMR0008")).await.unwrap();
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(
        client.query_order("DMR0008").await.unwrap().trade_state,
        TradeState::NotPay
    );
}

#[tokio::test]
async fn a_failed_trial_reopens_the_breaker() {
    let server = TestServer::start().await;
    let mut config = server.config();
    config.retry.max_attempts = 1;
    config.breaker = BreakerConfig {
        failure_threshold: 2,
        cool_down: Duration::from_millis(100),
    };
    let client = WechatPayClient::new(&config).unwrap();
    server.behave(|b| b.fail_remaining = u32::MAX);
    for _ in 0..2 {
        client.query_order("DMR0009").await.unwrap_err();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.breaker_state() != BreakerState::HalfOpen {
        assert!(Instant::now() < deadline, "breaker never half-opened");
        tokio::task::yield_now().await;
    }
    let before = server.seen().len();
    assert!(matches!(
        client.query_order("DMR0009").await,
        Err(Error::Api { status: 500, .. })
    ));
    assert_eq!(
        server.seen().len(),
        before + 1,
        "exactly one trial was sent"
    );
    assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
}

#[tokio::test]
async fn connection_refused_counts_as_an_outage() {
    // Bind and drop to get a port nobody listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = TestServer::start().await;
    let mut config = server.config();
    config.base_url = format!("http://{addr}");
    config.retry.max_attempts = 2;
    config.breaker.failure_threshold = 2;
    let client = WechatPayClient::new(&config).unwrap();
    let err = client.query_order("DMR0010").await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert!(matches!(
        client.query_order("DMR0010").await,
        Err(Error::CircuitOpen { .. })
    ));
}

#[tokio::test]
async fn bad_arguments_are_refused_before_sending() {
    let server = TestServer::start().await;
    let client = server.client();
    let mut o = order("DMR0011");
    o.amount_fen = 0;
    assert!(matches!(
        client.native_prepay(&o).await,
        Err(Error::InvalidArgument {
            field: "amount_fen",
            ..
        })
    ));
    assert!(matches!(
        client.query_order("../admin").await,
        Err(Error::InvalidArgument {
            field: "out_trade_no",
            ..
        })
    ));
    assert!(server.seen().is_empty());
    assert!(!format!("{client:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn client_opens_a_fresh_notification_and_refuses_a_replayed_one() {
    let server = TestServer::start().await;
    let client = server.client();
    // The Python-encrypted payment notification, delivered now and signed by the double.
    let n = &server.v["notifications"][0];
    let body = n["body"].as_str().unwrap();
    let ts = now().to_string();
    let nonce = "fresh-nonce-1";
    let sig = server
        .double
        .pubkey_signer
        .sign(format!("{ts}\n{nonce}\n{body}\n").as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert("Wechatpay-Serial", server.double.pubkey_id.parse().unwrap());
    headers.insert("Wechatpay-Timestamp", ts.parse().unwrap());
    headers.insert("Wechatpay-Nonce", nonce.parse().unwrap());
    headers.insert(
        "Wechatpay-Signature",
        STANDARD.encode(sig.to_bytes()).parse().unwrap(),
    );
    match client
        .parse_notification(&headers, body.as_bytes())
        .unwrap()
    {
        dmr_wechatpay::Notification::Transaction { transaction, .. } => {
            assert_eq!(transaction.out_trade_no, "DMR20261126000001");
            assert_eq!(transaction.amount.unwrap().payer_total, Some(90));
        }
        other => panic!("expected a transaction, got {other:?}"),
    }

    // The vector as recorded carries its original 2025 timestamp: a replay today.
    let mut replay = HeaderMap::new();
    for (k, v) in n["headers"].as_object().unwrap() {
        replay.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.as_str().unwrap().parse().unwrap(),
        );
    }
    let err = client
        .parse_notification(&replay, body.as_bytes())
        .unwrap_err();
    assert!(matches!(err, Error::StaleTimestamp { .. }), "{err}");
    assert!(err.is_authentication_failure());
}

#[tokio::test]
async fn platform_certificates_are_downloaded_decrypted_and_bootstrap_verified() {
    let server = TestServer::start().await;
    // A merchant that holds only the API v3 key and the public key: the answer is signed by
    // the certificate inside it, which the API v3 key authenticates.
    server.behave(|b| b.sign_with_certificate = true);
    let mut config = server.config();
    config.platform_certificates_pem.clear();
    let client = WechatPayClient::new(&config).unwrap();
    let certs = client.download_platform_certificates().await.unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial_no, key(&server.v, "platform_serial_no"));
    assert_eq!(certs[0].pem, key(&server.v, "platform_certificate_pem"));
    assert_eq!(
        certs[0].expire_time.as_deref(),
        Some("2036-01-01T08:00:00+08:00")
    );

    // The downloaded PEM makes a working configuration.
    config.platform_certificates_pem = vec![certs[0].pem.clone()];
    config.wechatpay_public_key = None;
    let client = WechatPayClient::new(&config).unwrap();
    assert_eq!(
        client
            .native_prepay(&order("DMR0012"))
            .await
            .unwrap()
            .code_url,
        "weixin://wxpay/bizpayurl?pr=DMR0012"
    );

    // A forged signature is still refused.
    server.behave(|b| b.bad_signature = true);
    let err = client.download_platform_certificates().await.unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}
