//! Database leases: among contenders, at most one holds a lease at any moment.

use crate::on_every_backend;

on_every_backend!(
    two_contenders_never_both_hold_a_lease,
    expired_lease_can_be_taken_over
);

mod scenarios {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use dmr_cloud::db::{Db, lease};

    use crate::common::{DbKind, fresh_database};

    pub async fn two_contenders_never_both_hold_a_lease(kind: &DbKind) {
        let (url, _dir) = fresh_database(kind).await;
        // Two pools, like two instances sharing one database.
        let first = Db::connect(&url, 2).await.unwrap();
        first.migrate().await.unwrap();
        let second = Db::connect(&url, 2).await.unwrap();
        let holding = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (name, db) in [("one", first.clone()), ("two", second.clone())] {
            let holding = holding.clone();
            let max_seen = max_seen.clone();
            tasks.push(tokio::spawn(async move {
                let mut wins = 0;
                for _ in 0..60 {
                    if lease::try_acquire(&db, "settlement", name, Duration::from_secs(30))
                        .await
                        .unwrap()
                    {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        assert_eq!(
                            lease::holder(&db, "settlement").await.unwrap().as_deref(),
                            Some(name)
                        );
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        assert!(lease::release(&db, "settlement", name).await.unwrap());
                        wins += 1;
                    }
                    tokio::task::yield_now().await;
                }
                wins
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1, "two holders at once");
        assert!(total > 0, "somebody must win sometimes");

        // While one holds it, the other is refused; renewing by the holder works.
        assert!(
            lease::try_acquire(&first, "expiry", "one", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(
            !lease::try_acquire(&second, "expiry", "two", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(
            lease::try_acquire(&first, "expiry", "one", Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(!lease::release(&second, "expiry", "two").await.unwrap());
        first.pool.close().await;
        second.pool.close().await;
    }

    pub async fn expired_lease_can_be_taken_over(kind: &DbKind) {
        let (url, _dir) = fresh_database(kind).await;
        let db = Db::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        assert!(
            lease::try_acquire(&db, "job", "crashed", Duration::from_millis(50))
                .await
                .unwrap()
        );
        assert!(
            !lease::try_acquire(&db, "job", "next", Duration::from_secs(10))
                .await
                .unwrap()
        );
        crate::common::eventually("the lease to expire", Duration::from_secs(5), || {
            let db = db.clone();
            async move {
                lease::try_acquire(&db, "job", "next", Duration::from_secs(10))
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(
            lease::holder(&db, "job").await.unwrap().as_deref(),
            Some("next")
        );
        db.pool.close().await;
    }
}

mod cleanup {
    use crate::on_every_backend;

    on_every_backend!(cleanup_purges_only_what_is_stale);

    mod scenarios {
        use dmr_cloud::db::{Db, now_ms};
        use dmr_cloud::jobs::cleanup_once;

        use crate::common::{DbKind, fresh_database};

        pub async fn cleanup_purges_only_what_is_stale(kind: &DbKind) {
            let (url, _dir) = fresh_database(kind).await;
            let db = Db::connect(&url, 2).await.unwrap();
            db.migrate().await.unwrap();
            let now = now_ms();
            let day = 24 * 3600 * 1000;
            sqlx::query("INSERT INTO users (id, username, display_name, role, password_hash, created_at, updated_at) VALUES ('u', 'u1x', 'U', 'platform_admin', 'x', 0, 0)")
                .execute(&db.pool).await.unwrap();
            for (id, expires) in [
                ("old", now - 30 * day),
                ("live", now + day),
                ("recent", now - day),
            ] {
                sqlx::query("INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) VALUES ($1, 'f', 'u', $1, $2, 0)")
                    .bind(id).bind(expires).execute(&db.pool).await.unwrap();
            }
            for (subject, updated, locked) in [
                ("stale", now - 3 * day, 0),
                ("locked", now - 3 * day, now + day),
                ("fresh", now, 0),
            ] {
                sqlx::query("INSERT INTO login_throttle (subject, failures, window_started_at, locked_until, updated_at) VALUES ($1, 1, 0, $2, $3)")
                    .bind(subject).bind(locked).bind(updated).execute(&db.pool).await.unwrap();
            }
            for (state, expires) in [("gone", now - 1), ("pending", now + 60_000)] {
                sqlx::query("INSERT INTO wechat_oauth_states (state_hash, session_hash, qr_code, expires_at, created_at) VALUES ($1, 's', 'q', $2, 0)")
                    .bind(state).bind(expires).execute(&db.pool).await.unwrap();
            }
            for (session, bound) in [("lapsed", now - 31 * day), ("current", now - 29 * day)] {
                sqlx::query("INSERT INTO wechat_openids (session_hash, openid, bound_at) VALUES ($1, 'o', $2)")
                    .bind(session).bind(bound).execute(&db.pool).await.unwrap();
            }
            let cleaned = cleanup_once(&db, now).await.unwrap();
            assert_eq!((cleaned.refresh_tokens, cleaned.throttle_rows), (1, 1));
            assert_eq!((cleaned.oauth_states, cleaned.openid_bindings), (1, 1));
            let left: Vec<String> =
                sqlx::query_scalar("SELECT state_hash FROM wechat_oauth_states")
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(left, vec!["pending".to_string()]);
            let left: Vec<String> = sqlx::query_scalar("SELECT session_hash FROM wechat_openids")
                .fetch_all(&db.pool)
                .await
                .unwrap();
            assert_eq!(left, vec!["current".to_string()], "a binding lives 30 days");
            let left: Vec<String> = sqlx::query_scalar("SELECT id FROM refresh_tokens ORDER BY id")
                .fetch_all(&db.pool)
                .await
                .unwrap();
            assert_eq!(
                left,
                vec!["live".to_string(), "recent".to_string()],
                "spent tokens stay a week for reuse detection"
            );
            let left: Vec<String> =
                sqlx::query_scalar("SELECT subject FROM login_throttle ORDER BY subject")
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(
                left,
                vec!["fresh".to_string(), "locked".to_string()],
                "a live lockout is kept"
            );
            db.pool.close().await;
        }
    }
}
