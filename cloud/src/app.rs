//! Assembling the service: the route table with every endpoint and the permission it
//! needs, the shared state, the fallbacks that keep even unknown routes in the API error
//! format, and serving with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware::from_fn_with_state;

use crate::auth::jwt::JwtKeys;
use crate::config::{Config, Secret};
use crate::db::Db;
use crate::error::ApiError;
use crate::http::metrics::{self, Metrics};
use crate::http::ratelimit::RateLimiter;
use crate::http::routes::{Access, RouteSpec, RouteTable};
use crate::rbac::Permission as P;
use crate::{
    AppState, auth, broker, enrollment, gateways, health, link, locks, merchants, openapi, orders,
    payments, users, venues,
};

/// Every route the service serves, with who may call it.
pub fn routes(state: AppState) -> (Router<AppState>, Vec<RouteSpec>) {
    use Access::{Authenticated, Gateway, Hook, Infra, Perm, Public};
    let (get, post, patch, delete) = (Method::GET, Method::POST, Method::PATCH, Method::DELETE);
    RouteTable::new(state)
        .add(get.clone(), "/health", Infra, health::health)
        .add(get.clone(), "/metrics", Infra, health::metrics)
        .add(get.clone(), "/api/openapi.json", Public, openapi::document)
        // EMQX HTTP authentication / authorisation hooks (external broker deployments)
        .add(
            post.clone(),
            "/api/v1/broker/auth",
            Hook,
            broker::hooks::auth,
        )
        .add(post.clone(), "/api/v1/broker/acl", Hook, broker::hooks::acl)
        // Accounts
        .add(
            post.clone(),
            "/api/v1/auth/login",
            Public,
            auth::handlers::login,
        )
        .add(
            post.clone(),
            "/api/v1/auth/refresh",
            Public,
            auth::handlers::refresh,
        )
        .add(
            post.clone(),
            "/api/v1/auth/logout",
            Public,
            auth::handlers::logout,
        )
        .add(
            post.clone(),
            "/api/v1/auth/password",
            Authenticated,
            auth::handlers::change_password,
        )
        .add(
            get.clone(),
            "/api/v1/me",
            Authenticated,
            users::handlers::me,
        )
        .add(
            patch.clone(),
            "/api/v1/me",
            Authenticated,
            users::handlers::update_me,
        )
        // Merchants (tenants)
        .add(
            get.clone(),
            "/api/v1/merchants",
            Perm(P::MerchantManage),
            merchants::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/merchants",
            Perm(P::MerchantManage),
            merchants::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/merchants/{id}",
            Perm(P::MerchantManage),
            merchants::handlers::get,
        )
        .add(
            patch.clone(),
            "/api/v1/merchants/{id}",
            Perm(P::MerchantManage),
            merchants::handlers::update,
        )
        .add(
            delete.clone(),
            "/api/v1/merchants/{id}",
            Perm(P::MerchantManage),
            merchants::handlers::delete,
        )
        // Venues
        .add(
            get.clone(),
            "/api/v1/venues",
            Perm(P::VenueRead),
            venues::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/venues",
            Perm(P::VenueWrite),
            venues::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/venues/{id}",
            Perm(P::VenueRead),
            venues::handlers::get,
        )
        .add(
            patch.clone(),
            "/api/v1/venues/{id}",
            Perm(P::VenueWrite),
            venues::handlers::update,
        )
        .add(
            delete.clone(),
            "/api/v1/venues/{id}",
            Perm(P::VenueWrite),
            venues::handlers::delete,
        )
        // Gateways
        .add(
            get.clone(),
            "/api/v1/gateways",
            Perm(P::DeviceRead),
            gateways::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/gateways",
            Perm(P::DeviceWrite),
            gateways::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/gateways/{id}",
            Perm(P::DeviceRead),
            gateways::handlers::get,
        )
        .add(
            patch.clone(),
            "/api/v1/gateways/{id}",
            Perm(P::DeviceWrite),
            gateways::handlers::update,
        )
        .add(
            delete.clone(),
            "/api/v1/gateways/{id}",
            Perm(P::DeviceWrite),
            gateways::handlers::delete,
        )
        .add(
            get.clone(),
            "/api/v1/gateways/{id}/commands",
            Perm(P::DeviceRead),
            link::commands::list_for_gateway,
        )
        // Locks
        .add(
            get.clone(),
            "/api/v1/locks",
            Perm(P::DeviceRead),
            locks::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/locks",
            Perm(P::DeviceWrite),
            locks::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/locks/{id}",
            Perm(P::DeviceRead),
            locks::handlers::get,
        )
        .add(
            patch.clone(),
            "/api/v1/locks/{id}",
            Perm(P::DeviceWrite),
            locks::handlers::update,
        )
        .add(
            delete.clone(),
            "/api/v1/locks/{id}",
            Perm(P::DeviceWrite),
            locks::handlers::delete,
        )
        .add(
            post.clone(),
            "/api/v1/locks/{id}/unlock",
            Perm(P::DeviceUnlock),
            link::commands::unlock_lock,
        )
        // Users of a merchant
        .add(
            get.clone(),
            "/api/v1/users",
            Perm(P::UserManage),
            users::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/users",
            Perm(P::UserManage),
            users::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/users/{id}",
            Perm(P::UserManage),
            users::handlers::get,
        )
        .add(
            patch.clone(),
            "/api/v1/users/{id}",
            Perm(P::UserManage),
            users::handlers::update,
        )
        .add(
            delete.clone(),
            "/api/v1/users/{id}",
            Perm(P::UserManage),
            users::handlers::delete,
        )
        // Enrollment codes
        .add(
            get.clone(),
            "/api/v1/enrollment-codes",
            Perm(P::DeviceRead),
            enrollment::handlers::list,
        )
        .add(
            post.clone(),
            "/api/v1/enrollment-codes",
            Perm(P::DeviceWrite),
            enrollment::handlers::create,
        )
        .add(
            get.clone(),
            "/api/v1/enrollment-codes/{id}",
            Perm(P::DeviceRead),
            enrollment::handlers::get,
        )
        .add(
            delete,
            "/api/v1/enrollment-codes/{id}",
            Perm(P::DeviceWrite),
            enrollment::handlers::delete,
        )
        // Phone pages (no login, rate limited)
        .add(
            get.clone(),
            "/api/v1/public/locks/{qr_code}",
            Public,
            orders::public::lock,
        )
        .add(
            post.clone(),
            "/api/v1/public/orders",
            Public,
            orders::public::create,
        )
        .add(
            get.clone(),
            "/api/v1/public/orders/{id}",
            Public,
            orders::public::get,
        )
        .add(
            get.clone(),
            "/api/v1/public/orders/{id}/events",
            Public,
            orders::public::events,
        )
        .add(
            get.clone(),
            "/api/v1/public/orders/{id}/offline-token",
            Public,
            orders::public::offline_token,
        )
        .add(
            get.clone(),
            "/api/v1/public/my/orders",
            Public,
            orders::public::my_orders,
        )
        .add(
            post.clone(),
            "/api/v1/public/wechat/oauth",
            Public,
            orders::wechat_oauth::start,
        )
        .add(
            get.clone(),
            "/api/v1/public/wechat/oauth/callback",
            Public,
            orders::wechat_oauth::callback,
        )
        .add(
            get.clone(),
            "/api/v1/public/wechat/identity",
            Public,
            orders::wechat_oauth::identity,
        )
        // Payment providers: authenticated by their signatures, not rate limited per
        // client (a provider's retries come from few addresses).
        .add(
            post.clone(),
            "/api/v1/payments/notify/{provider}",
            Infra,
            payments::notify::handler,
        )
        .add(
            get.clone(),
            "/pay/sandbox/{payment_id}",
            Public,
            payments::sandbox::page,
        )
        .add(
            post.clone(),
            "/pay/sandbox/{payment_id}",
            Public,
            payments::sandbox::confirm,
        )
        // Orders and money (console)
        .add(
            get.clone(),
            "/api/v1/orders",
            Perm(P::OrderRead),
            orders::handlers::list,
        )
        .add(
            get.clone(),
            "/api/v1/orders.csv",
            Perm(P::OrderRead),
            orders::handlers::csv,
        )
        .add(
            get.clone(),
            "/api/v1/orders/{id}",
            Perm(P::OrderRead),
            orders::handlers::get,
        )
        .add(
            post.clone(),
            "/api/v1/orders/{id}/refund",
            Perm(P::OrderRefund),
            orders::handlers::refund,
        )
        .add(
            get.clone(),
            "/api/v1/settlements",
            Perm(P::SettlementRead),
            orders::handlers::settlements,
        )
        .add(
            get.clone(),
            "/api/v1/settlements/{id}/csv",
            Perm(P::SettlementRead),
            orders::handlers::settlement_csv,
        )
        .add(
            get.clone(),
            "/api/v1/reconciliation/reports",
            Perm(P::SettlementRead),
            orders::handlers::reports,
        )
        .add(
            get.clone(),
            "/api/v1/reconciliation/reports/{id}/items",
            Perm(P::SettlementRead),
            orders::handlers::report_items,
        )
        // Firmware releases: admins publish, technicians download to flash.
        .add(
            get.clone(),
            "/api/v1/firmware-releases",
            Perm(P::FirmwareDownload),
            crate::firmware::list,
        )
        .add(
            post.clone(),
            "/api/v1/firmware-releases",
            Perm(P::FirmwareManage),
            crate::firmware::upload,
        )
        .add(
            get.clone(),
            "/api/v1/firmware-releases/{id}",
            Perm(P::FirmwareDownload),
            crate::firmware::get,
        )
        .add(
            get.clone(),
            "/api/v1/firmware-releases/{id}/image",
            Perm(P::FirmwareDownload),
            crate::firmware::image,
        )
        .add(
            post,
            "/api/v1/firmware-releases/{id}/withdraw",
            Perm(P::FirmwareManage),
            crate::firmware::withdraw,
        )
        .add(
            get,
            "/api/v1/dashboard/summary",
            Perm(P::OrderRead),
            orders::handlers::summary,
        )
        // The gateway link: enrollment (public, rate limited) and gateway-signed requests.
        .add(
            Method::POST,
            "/api/v1/gateway/enroll",
            Public,
            link::enroll::enroll,
        )
        .add(
            Method::POST,
            "/api/v1/gateway/events",
            Gateway,
            link::sync::events,
        )
        .add(
            Method::GET,
            "/api/v1/gateway/sync",
            Gateway,
            link::sync::sync,
        )
        // Console: live changes and alarms.
        .add(
            Method::GET,
            "/api/v1/live",
            Perm(P::DeviceRead),
            link::live::live,
        )
        .add(
            Method::GET,
            "/api/v1/alarms",
            Perm(P::DeviceRead),
            link::alarms::list,
        )
        .add(
            Method::POST,
            "/api/v1/alarms/{id}/ack",
            Perm(P::DeviceWrite),
            link::alarms::ack,
        )
        .finish()
}

/// A built service, ready to serve.
#[derive(Debug)]
pub struct App {
    pub router: Router,
    /// What the router serves (for the OpenAPI and RBAC tests).
    pub routes: Vec<RouteSpec>,
    pub state: AppState,
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Connects and migrates the database, then builds the router.
pub async fn build_app(config: Config) -> anyhow::Result<App> {
    let db = Db::connect(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .await?;
    db.migrate().await?;
    let key: Secret<Vec<u8>> = match &config.auth.jwt_secret {
        Some(s) => Secret::new(s.expose().as_bytes().to_vec()),
        None => {
            let generated = db
                .shared_secret("jwt_hs256", auth::store::new_refresh_secret)
                .await?;
            Secret::new(generated.into_bytes())
        }
    };
    let jwt = JwtKeys::new(&key, &config.auth.issuer, &config.auth.audience)?;
    let master = config
        .keys
        .master_key
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}", crate::config::MASTER_KEY_HELP))?;
    let keys = crate::link::keys::KeyRing::new(db.clone(), master);
    keys.ensure().await.context("cloud signing keys")?;
    let link_metrics = Arc::new(crate::link::metrics::LinkMetrics::default());
    let ingest = crate::link::ingest::Ingest::new(db.clone(), link_metrics.clone());
    let keys = Arc::new(keys);
    // The cloud's own broker password: configured, or generated once and kept in the
    // database so every instance (and the embedded broker) agrees on it.
    let cloud_password = broker::cloud_password(&config, &db).await?;
    let mqtt_auth = broker::auth::BrokerAuth::new(db.clone(), cloud_password.clone());
    let broker_state =
        broker::BrokerState::new(Arc::new(mqtt_auth), config.mqtt.hook_secret.clone());
    let mut bridge_config = config.mqtt.clone();
    bridge_config.password = Some(cloud_password);
    let mqtt = crate::link::bridge::MqttLink::new(&bridge_config)?;
    let commands = Arc::new(crate::link::commands::Commands::new(
        db.clone(),
        keys.clone(),
        mqtt.clone(),
    ));
    let orders = Arc::new(build_orders(&db, &config, keys.clone(), commands.clone()).await?);
    let state = AppState {
        orders,
        mqtt,
        commands,
        stop: Arc::new(tokio::sync::watch::channel(false).0),
        keys,
        ingest: Arc::new(ingest),
        link_metrics,
        db,
        jwt: Arc::new(jwt),
        metrics: Arc::new(Metrics::default()),
        limiter: Arc::new(RateLimiter::new(config.rate_limit.per_minute)),
        broker: Arc::new(broker_state),
        config: Arc::new(config),
    };
    let (router, routes) = routes(state.clone());
    let router = router
        .fallback(crate::web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(state.config.server.body_limit_bytes))
        .with_state(state.clone());
    Ok(App {
        router,
        routes,
        state,
    })
}

/// The orders service: timing from the config, the sandbox provider (its key from the
/// config or generated once and kept in the database, so every instance verifies the
/// same signatures), and the gateway link as the unlock dispatcher.
async fn build_orders(
    db: &Db,
    config: &Config,
    keys: Arc<crate::link::keys::KeyRing>,
    commands: Arc<crate::link::commands::Commands>,
) -> anyhow::Result<orders::Orders> {
    let o = &config.orders;
    let secs = |s: u64| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    };
    let oc = orders::OrdersConfig {
        pay_timeout_ms: secs(o.pay_timeout_secs),
        unlock_timeout_ms: secs(o.unlock_timeout_secs),
        refund_grace_ms: secs(o.refund_grace_secs),
        job_interval_ms: i64::try_from(o.job_interval_ms).unwrap_or(1000),
        providers: Vec::new(),
    };
    orders::events::set_refund_grace_ms(oc.refund_grace_ms);
    let mut providers = payments::Providers::default();
    let mut sandbox = None;
    if o.sandbox {
        let key = match &o.sandbox_key {
            Some(k) => k.expose().clone(),
            None => {
                db.shared_secret("sandbox_pay_hmac", auth::store::new_refresh_secret)
                    .await?
            }
        };
        let sb = Arc::new(payments::sandbox::Sandbox::new(
            key.into_bytes(),
            &config.server.public_base_url,
        ));
        providers.add(sb.clone());
        sandbox = Some(sb);
    }
    if let Some(wx) = &config.wechatpay {
        // The config was validated at load; this only fails on a client build problem.
        let provider = payments::wechatpay::WechatPay::new(wx)
            .map_err(|e| anyhow::anyhow!("wechatpay: {e}"))?;
        providers.add(Arc::new(provider));
    }
    let access = db
        .shared_secret("order_access_hmac", auth::store::new_refresh_secret)
        .await?;
    let dispatcher = Arc::new(orders::dispatch::LinkDispatcher::new(keys, commands));
    Ok(orders::Orders::new(
        oc,
        providers,
        sandbox,
        dispatcher,
        access.into_bytes(),
    ))
}

/// Serves until `shutdown` resolves, then lets requests in flight finish.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = app.state.stop.clone();
    let shutdown = async move {
        shutdown.await;
        // End the live streams, or graceful shutdown would wait for them forever.
        stop.send_replace(true);
    };
    axum::serve(
        listener,
        app.router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("HTTP server")
}

/// `dmr-cloud serve`: build, bind, serve until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let app = build_app(config).await?;
    // The embedded broker comes up before anything connects to it (the MQTT bridge, then
    // gateways); a port already taken is a start-up error, not a silent half-service.
    let embedded = broker::start_embedded(&app.state).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(listen), "listening");
    let db = app.state.db.clone();
    // One stop signal fans out to the HTTP server and the background jobs.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let holder = format!("{}:{}", hostname(), std::process::id());
    let cleanup = tokio::spawn(crate::jobs::run_cleanup(
        db.clone(),
        holder.clone(),
        std::time::Duration::from_secs(600),
        stop_rx.clone(),
    ));
    let order_jobs = app.state.config.orders.jobs.then(|| {
        tokio::spawn(crate::orders::jobs::run(
            app.state.clone(),
            format!("{}:{}", hostname(), std::process::id()),
            std::time::Duration::from_millis(app.state.config.orders.job_interval_ms),
            stop_rx.clone(),
        ))
    });
    let prune = tokio::spawn(crate::link::gwauth::run_prune(
        app.state.clone(),
        format!("{}:{}", hostname(), std::process::id()),
        std::time::Duration::from_secs(60),
        stop_rx.clone(),
    ));
    let (bridge, liveness) = spawn_link(&app.state, &holder, &stop_rx);
    let mut server_stop = stop_rx;
    let server = serve(app, listener, async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    });
    tokio::pin!(server);
    let served = tokio::select! {
        r = &mut server => {
            tracing::error!("HTTP server ended on its own");
            r
        }
        () = shutdown_signal() => {
            let _ = stop_tx.send(true);
            server.await
        }
    };
    // Whatever ended first, tell the jobs too.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(std::time::Duration::from_secs(10), prune)
        .await
        .is_err()
    {
        tracing::warn!("link prune job did not stop within 10 s");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), cleanup).await {
        Ok(Ok(())) => tracing::info!("cleanup job stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "cleanup job panicked"),
        Err(_) => tracing::warn!("cleanup job did not stop within 10 s"),
    }
    if let Some(jobs) = order_jobs
        && tokio::time::timeout(std::time::Duration::from_secs(10), jobs)
            .await
            .is_err()
    {
        tracing::warn!("order jobs did not stop within 10 s");
    }
    for (name, task) in [("MQTT bridge", bridge), ("liveness job", liveness)] {
        let Some(task) = task else { continue };
        match tokio::time::timeout(std::time::Duration::from_secs(15), task).await {
            Ok(Ok(())) => tracing::info!("{name} stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "{name} panicked"),
            Err(_) => tracing::warn!("{name} did not stop within 15 s"),
        }
    }
    // Last, so the bridge and the jobs could still publish while stopping.
    if let Some(b) = embedded {
        b.shutdown().await;
    }
    db.pool.close().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

type Task = Option<tokio::task::JoinHandle<()>>;

/// Starts the gateway link's background tasks: the MQTT bridge (unless `mqtt.enabled` is
/// false) and the leased liveness job. Tests that run the link call this too.
pub fn spawn_link(
    state: &AppState,
    holder: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (Task, Task) {
    let bridge = state
        .config
        .mqtt
        .enabled
        .then(|| tokio::spawn(crate::link::bridge::run(state.clone(), stop.clone())));
    let liveness = tokio::spawn(crate::link::liveness::run(
        state.clone(),
        holder.to_string(),
        std::time::Duration::from_secs(10),
        stop.clone(),
    ));
    (bridge, Some(liveness))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
