//! MQTT credentials: who a CONNECT is, checked against the database. The cloud's own user
//! (`dmr-cloud`) has a configured or generated secret; a gateway (`gw:<id>`) has the random
//! password enrollment handed out once, of which only a SHA-256 hash is stored
//! (`gateways.mqtt_password_hash`, hex SHA-256). A fast hash is enough here, unlike for people's
//! passwords: the password is 256 random bits, so there is nothing to guess.
//! Only enrolled, non-deleted gateways get in; re-enrollment replaces the hash, so the old
//! password stops working, and retiring a gateway locks it out.
//!
//! The embedded broker asks on every CONNECT and may use a short cache (a reconnect storm
//! after a network blip would otherwise become a query storm); the EMQX hook never caches,
//! EMQX keeps its own. [`BrokerAuth::forget`] drops a cached gateway at once (enrollment
//! calls it); other instances see a change within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::broker::acl::{Principal, principal_of};
use crate::config::Secret;
use crate::db::Db;
use crate::error::ApiError;

/// How long a gateway's stored hash is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; the cache is cleared when full (simple, and rare).
const CACHE_MAX: usize = 100_000;

/// The stored form of an MQTT password: the enrollment's definition, so the broker and
/// the enrollment can never disagree on it.
pub use crate::link::enroll::mqtt_password_hash;

/// Why a CONNECT is refused (for logs and metrics; the client only learns "denied").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Neither `dmr-cloud` nor `gw:<uuid>`, or no username at all.
    UnknownUser,
    /// No such gateway, not enrolled, retired or deleted.
    NotEnrolled,
    BadPassword,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::UnknownUser => "unknown_user",
            Denied::NotEnrolled => "not_enrolled",
            Denied::BadPassword => "bad_password",
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    /// The stored hash; `None` when the gateway may not connect at all.
    hash: Option<String>,
    at: Instant,
}

/// Checks MQTT credentials; one per process, in `AppState`.
#[derive(Debug)]
pub struct BrokerAuth {
    db: Db,
    cloud_password: Secret<String>,
    cache: Mutex<HashMap<Uuid, Cached>>,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

impl BrokerAuth {
    pub fn new(db: Db, cloud_password: Secret<String>) -> BrokerAuth {
        BrokerAuth {
            db,
            cloud_password,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The password of the `dmr-cloud` MQTT user (the bridge connects with it).
    pub fn cloud_password(&self) -> &Secret<String> {
        &self.cloud_password
    }

    /// Drops what the cache knows about a gateway (after enrollment, retirement).
    pub fn forget(&self, gateway: Uuid) {
        self.lock().remove(&gateway);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who these credentials are, or why not. `Err` only when the database cannot answer.
    pub async fn check(
        &self,
        username: Option<&str>,
        password: Option<&str>,
        use_cache: bool,
    ) -> Result<Result<Principal, Denied>, ApiError> {
        let Some(who) = username.and_then(principal_of) else {
            return Ok(Err(Denied::UnknownUser));
        };
        let password = password.unwrap_or("");
        match who {
            Principal::Cloud => {
                let ok = same(password.as_bytes(), self.cloud_password.expose().as_bytes());
                Ok(if ok {
                    Ok(who)
                } else {
                    Err(Denied::BadPassword)
                })
            }
            Principal::Gateway(id) => {
                let stored = self.stored_hash(id, use_cache).await?;
                let Some(stored) = stored else {
                    return Ok(Err(Denied::NotEnrolled));
                };
                let presented = mqtt_password_hash(password);
                Ok(if same(presented.as_bytes(), stored.as_bytes()) {
                    Ok(who)
                } else {
                    Err(Denied::BadPassword)
                })
            }
        }
    }

    async fn stored_hash(&self, id: Uuid, use_cache: bool) -> Result<Option<String>, ApiError> {
        if use_cache
            && let Some(c) = self.lock().get(&id)
            && c.at.elapsed() < CACHE_TTL
        {
            return Ok(c.hash.clone());
        }
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, mqtt_password_hash FROM gateways \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        let hash = match row {
            Some((status, Some(hash))) if status == "enrolled" => Some(hash),
            _ => None,
        };
        if use_cache {
            let mut cache = self.lock();
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                id,
                Cached {
                    hash: hash.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(hash)
    }
}

/// The embedded broker's view of [`BrokerAuth`].
#[derive(Debug)]
pub struct EmbeddedAuthenticator {
    pub auth: std::sync::Arc<BrokerAuth>,
}

impl dmr_broker::Authenticator for EmbeddedAuthenticator {
    fn authenticate<'a>(
        &'a self,
        info: &'a dmr_broker::ConnectInfo,
    ) -> dmr_broker::BoxFuture<'a, dmr_broker::AuthDecision> {
        Box::pin(async move {
            use dmr_broker::AuthDecision;
            match self
                .auth
                .check(info.username.as_deref(), info.password.as_deref(), true)
                .await
            {
                Ok(Ok(who)) => AuthDecision::Allow(std::sync::Arc::new(who)),
                Ok(Err(why)) => {
                    tracing::info!(
                        username = info.username.as_deref().unwrap_or(""),
                        client_id = %info.client_id,
                        peer = %info.peer,
                        reason = why.as_str(),
                        "MQTT login refused"
                    );
                    match why {
                        Denied::BadPassword => AuthDecision::BadCredentials,
                        Denied::UnknownUser | Denied::NotEnrolled => AuthDecision::NotAuthorized,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "MQTT login: database unavailable");
                    AuthDecision::Unavailable
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_hex_sha256() {
        let h = mqtt_password_hash("secret");
        assert_eq!(h.len(), 64);
        assert_eq!(h, mqtt_password_hash("secret"));
        assert_ne!(h, mqtt_password_hash("secreT"));
        // Known answer: SHA-256("abc").
        assert_eq!(
            mqtt_password_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
