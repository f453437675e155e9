//! The order hook on a whole ingest batch (`orders::on_gateway_events`): the batch reads
//! the open orders once and records the evidence in one insert, and must come to exactly
//! what the same events applied one at a time come to. Each scenario sets up the same order
//! state on two tenants' locks, applies the events one by one on one and as one batch on
//! the other, and compares everything the hook writes: status, door time, review flag,
//! transitions, refunds, alerts and evidence rows. Plus the batch through the real ingest
//! (signed messages, one `submit_many`).

use crate::on_every_backend;

on_every_backend!(
    batched_order_events_match_one_by_one,
    door_events_through_ingest_in_one_batch,
    door_evidence_of_earlier_batches_decides_completion,
    acks_through_ingest_settle_the_command_and_move_the_order,
);

mod scenarios {
    use dmr_cloud::db::now_ms;
    use dmr_cloud::link::ingest::{Outcome, Via};
    use dmr_cloud::orders::AppliedEvent;
    use dmr_protocol::keys::{generate, public_b64u};
    use dmr_protocol::message::{
        Ack, DoorChange, DoorEvent, Event, Message, Presenter, ResultCode, UnlockEvent,
    };
    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use crate::common::{DbKind, Tenant, TestApp, seed_world};
    use crate::link_support::signed;
    use crate::orders::support::*;

    /// Where the order is when the events arrive.
    #[derive(Clone, Copy, Debug)]
    enum Start {
        Unlocking,
        Unlocked,
        UnlockFailed,
    }

    /// One event of a scenario. `slot` names the event id: the same slot twice is the same
    /// event delivered twice.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// A door event on the order's lock at t0 + offset.
        Door(DoorChange, i64, usize),
        /// An unlock event on the order's lock naming the order.
        Unlock(ResultCode, usize),
        /// A door event on a lock without any order.
        Stranger(DoorChange, usize),
    }

    struct Side<'a> {
        t: &'a Tenant,
        order: String,
        stranger: Uuid,
        ids: Vec<Uuid>,
        /// Transitions made by the setup (their reasons name the payment, which differs).
        setup_transitions: usize,
    }

    fn event(side: &Side<'_>, step: Step, t0: i64) -> (Uuid, Event) {
        let lock = Uuid::parse_str(&side.t.lock_id).unwrap();
        let at = |off: i64| u64::try_from(t0 + off).unwrap();
        match step {
            Step::Door(door, off, slot) => (
                side.ids[slot],
                Event::Door(DoorEvent {
                    lock_id: lock,
                    door,
                    at: at(off),
                }),
            ),
            Step::Unlock(result, slot) => (
                side.ids[slot],
                Event::Unlock(UnlockEvent {
                    lock_id: lock,
                    token_id: None,
                    order_id: Some(Uuid::parse_str(&side.order).unwrap()),
                    result,
                    via: Some(Presenter::Cloud),
                    at: at(10 * i64::try_from(slot).unwrap()),
                }),
            ),
            Step::Stranger(door, slot) => (
                side.ids[slot],
                Event::Door(DoorEvent {
                    lock_id: side.stranger,
                    door,
                    at: at(5),
                }),
            ),
        }
    }

    async fn start_order(app: &TestApp, t: &Tenant, start: Start) -> String {
        let (id, _, payment) = new_order(app, t).await;
        assert_eq!(pay(app, &payment, "").await, StatusCode::OK);
        assert_eq!(order_status(app, &id).await, "unlocking");
        let result = match start {
            Start::Unlocking => None,
            Start::Unlocked => Some(ResultCode::Ok),
            Start::UnlockFailed => Some(ResultCode::LockFault),
        };
        if let Some(r) = result {
            gateway_event(
                app,
                &t.gateway_id,
                unlock_event(&t.lock_id, &id, r, Presenter::Cloud),
            )
            .await;
        }
        id
    }

    async fn rows(app: &TestApp, sql: &str, id: &str) -> Vec<Value> {
        let raw: Vec<(Option<String>, Option<String>, Option<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(id.to_string())
                .fetch_all(&app.state.db.pool)
                .await
                .unwrap();
        raw.into_iter().map(|(a, b, c)| json!([a, b, c])).collect()
    }

    /// Everything the hook can have written for this side, in comparable form.
    async fn snapshot(app: &TestApp, side: &Side<'_>, t0: i64) -> Value {
        let mut conn = app.state.db.pool.acquire().await.unwrap();
        let o = dmr_cloud::orders::load(&mut conn, &side.order)
            .await
            .unwrap()
            .unwrap();
        drop(conn);
        let mut evidence = Vec::new();
        for id in &side.ids {
            let row: Option<(String, String, Option<String>, String, i64)> = sqlx::query_as(
                "SELECT source, result, order_id, lock_id, at FROM order_unlock_events WHERE id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&app.state.db.pool)
            .await
            .unwrap();
            evidence.push(row.map(|(source, result, order, lock, at)| {
                let whose = match order {
                    Some(o) if o == side.order => "order",
                    Some(_) => "another order",
                    None => "none",
                };
                let lock = if lock == side.t.lock_id {
                    "own"
                } else if lock == side.stranger.to_string() {
                    "stranger"
                } else {
                    "other"
                };
                json!([source, result, whose, lock, at - t0])
            }));
        }
        json!({
            "status": o.status,
            "door_opened": o.door_opened_at.map(|at| at - t0),
            "review": o.review_reason,
            "transitions": rows(app,
                "SELECT from_status, to_status, reason FROM order_transitions WHERE order_id = $1 ORDER BY at, id",
                &side.order).await.split_off(side.setup_transitions),
            "refunds": rows(app,
                "SELECT status, reason, NULL FROM refunds WHERE order_id = $1 ORDER BY created_at, id",
                &side.order).await,
            "alerts": rows(app,
                "SELECT kind, NULL, NULL FROM payment_alerts WHERE order_id = $1 ORDER BY created_at, id",
                &side.order).await,
            "evidence": evidence,
        })
    }

    /// Tenant `t`'s gateway enrolled with a fresh key, so signed messages from it pass
    /// ingest: the key to sign with and the gateway's id.
    async fn enrolled_gateway(app: &TestApp, t: &Tenant) -> (ed25519_dalek::SigningKey, Uuid) {
        let key = generate();
        sqlx::query("UPDATE gateways SET status = 'enrolled', public_key = $1 WHERE id = $2")
            .bind(public_b64u(&key.verifying_key()))
            .bind(t.gateway_id.clone())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        (key, Uuid::parse_str(&t.gateway_id).unwrap())
    }

    /// Applies `events` as one batch of the ingest's order hook, in one transaction.
    async fn apply_batch(app: &TestApp, gw: Uuid, events: &[(Uuid, Event)], t0: i64) {
        let applied: Vec<AppliedEvent<'_>> = events
            .iter()
            .map(|(id, ev)| AppliedEvent {
                gateway_id: gw,
                event_id: *id,
                event: ev,
                ts_ms: t0,
            })
            .collect();
        let mut tx = app.state.db.pool.begin().await.unwrap();
        dmr_cloud::orders::on_gateway_events(&mut tx, &applied)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// Frees the lock for the next scenario whatever state the order ended in.
    async fn retire(app: &TestApp, order: &str) {
        sqlx::query("UPDATE orders SET status = 'cancelled', active_lock_id = NULL WHERE id = $1")
            .bind(order.to_string())
            .execute(&app.state.db.pool)
            .await
            .unwrap();
    }

    pub async fn batched_order_events_match_one_by_one(kind: &DbKind) {
        use DoorChange::{Closed, Opened};
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let scenarios: Vec<(&str, Start, Vec<Step>, &str)> = vec![
            (
                "opened then closed in one batch completes",
                Start::Unlocked,
                vec![Step::Door(Opened, 100, 0), Step::Door(Closed, 400, 1)],
                "completed",
            ),
            (
                "closed applied before the opened that preceded it still completes",
                Start::Unlocked,
                vec![Step::Door(Closed, 400, 0), Step::Door(Opened, 100, 1)],
                "completed",
            ),
            (
                "a close older than the open is no cycle",
                Start::Unlocked,
                vec![Step::Door(Closed, 50, 0), Step::Door(Opened, 100, 1)],
                "unlocked",
            ),
            (
                "the door opening proves the unlock; a later open belongs to no order",
                Start::Unlocking,
                vec![
                    Step::Door(Opened, 100, 0),
                    Step::Door(Closed, 400, 1),
                    Step::Door(Opened, 500, 2),
                ],
                "completed",
            ),
            (
                "unlock ok, then the door cycle, in one batch",
                Start::Unlocking,
                vec![
                    Step::Unlock(ResultCode::Ok, 0),
                    Step::Door(Opened, 100, 1),
                    Step::Door(Closed, 400, 2),
                ],
                "completed",
            ),
            (
                "accepted changes nothing; the door does",
                Start::Unlocking,
                vec![
                    Step::Unlock(ResultCode::Accepted, 0),
                    Step::Door(Closed, 400, 1),
                    Step::Door(Opened, 100, 2),
                ],
                "completed",
            ),
            (
                "failure then a late ok in one batch cancels the refund",
                Start::Unlocking,
                vec![
                    Step::Unlock(ResultCode::LockFault, 0),
                    Step::Unlock(ResultCode::Ok, 1),
                    Step::Door(Opened, 100, 2),
                    Step::Door(Closed, 400, 3),
                ],
                "completed",
            ),
            (
                "a failed-over order whose door opens and closes",
                Start::UnlockFailed,
                vec![Step::Door(Opened, 100, 0), Step::Door(Closed, 400, 1)],
                "completed",
            ),
            (
                "the same event id twice in one batch counts once",
                Start::Unlocked,
                vec![
                    Step::Door(Opened, 100, 0),
                    Step::Door(Opened, 100, 0),
                    Step::Door(Closed, 400, 1),
                    Step::Door(Closed, 400, 1),
                ],
                "completed",
            ),
            (
                "events for a lock without an order only leave evidence",
                Start::Unlocked,
                vec![
                    Step::Stranger(Opened, 0),
                    Step::Door(Opened, 100, 1),
                    Step::Stranger(Closed, 2),
                    Step::Door(Closed, 400, 3),
                    Step::Stranger(Opened, 2),
                ],
                "completed",
            ),
            (
                "a failure in the batch refunds; the door events after it wait for proof",
                Start::Unlocking,
                vec![
                    Step::Door(Closed, 400, 0),
                    Step::Unlock(ResultCode::LockUnreachable, 1),
                    Step::Door(Closed, 450, 2),
                ],
                "unlock_failed",
            ),
        ];
        for (what, start, steps, want) in scenarios {
            let t0 = now_ms();
            let mut snaps = Vec::new();
            for (tenant, batched) in [(&w.a, false), (&w.b, true)] {
                let order = start_order(&app, tenant, start).await;
                let setup_transitions = usize::try_from(
                    scalar(
                        &app,
                        "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1",
                        &order,
                    )
                    .await,
                )
                .unwrap();
                let side = Side {
                    t: tenant,
                    order,
                    stranger: Uuid::new_v4(),
                    ids: (0..8).map(|_| Uuid::now_v7()).collect(),
                    setup_transitions,
                };
                let gw = Uuid::parse_str(&tenant.gateway_id).unwrap();
                let events: Vec<(Uuid, Event)> =
                    steps.iter().map(|s| event(&side, *s, t0)).collect();
                if batched {
                    apply_batch(&app, gw, &events, t0).await;
                    // Redelivered as a whole: nothing changes.
                    let before = snapshot(&app, &side, t0).await;
                    apply_batch(&app, gw, &events, t0).await;
                    assert_eq!(
                        snapshot(&app, &side, t0).await,
                        before,
                        "{what}: redelivery"
                    );
                } else {
                    for (id, ev) in &events {
                        let mut conn = app.state.db.pool.acquire().await.unwrap();
                        let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
                        dmr_cloud::orders::on_gateway_event(&mut tx, gw, *id, ev, t0)
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                }
                snaps.push(snapshot(&app, &side, t0).await);
                retire(&app, &side.order).await;
            }
            assert_eq!(snaps[0]["status"], want, "{what}: {:#}", snaps[0]);
            assert_eq!(
                snaps[1], snaps[0],
                "{what}: the batch (left) differs from one by one (right)"
            );
        }
        app.stop().await;
    }

    /// Signed door events through `Ingest::submit_many` in ONE batch: the order completes,
    /// a repeated message is a duplicate, a lock without an order only gets evidence.
    pub async fn door_events_through_ingest_in_one_batch(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let (key, gw) = enrolled_gateway(&app, &w.a).await;
        let order = start_order(&app, &w.a, Start::Unlocked).await;
        let t = now_ms();
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        let door = |lock_id: Uuid, door: DoorChange, at: i64| {
            Message::Event(Event::Door(DoorEvent {
                lock_id,
                door,
                at: u64::try_from(at).unwrap(),
            }))
        };
        let (opened_id, opened) = signed(gw, &key, t, door(lock, DoorChange::Opened, t - 300));
        let (closed_id, closed) = signed(gw, &key, t, door(lock, DoorChange::Closed, t - 100));
        let stranger = Uuid::new_v4();
        let (stranger_id, other) = signed(gw, &key, t, door(stranger, DoorChange::Opened, t));
        let items: Vec<(Uuid, &str)> = [&opened, &closed, &other, &opened]
            .into_iter()
            .map(|m| (gw, m.as_str()))
            .collect();
        let out = app
            .state
            .ingest
            .submit_many(Via::Mqtt, &items)
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Applied,
                Outcome::Applied,
                Outcome::Applied,
                Outcome::Duplicate
            ]
        );
        assert_eq!(order_status(&app, &order).await, "completed");
        let of = |id: Uuid| {
            let pool = app.state.db.pool.clone();
            async move {
                sqlx::query_as::<_, (Option<String>, String)>(
                    "SELECT order_id, result FROM order_unlock_events WHERE id = $1",
                )
                .bind(id.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        assert_eq!(of(opened_id).await, (Some(order.clone()), "opened".into()));
        assert_eq!(of(closed_id).await, (Some(order.clone()), "closed".into()));
        assert_eq!(of(stranger_id).await, (None, "opened".into()));
        let completions = scalar(
            &app,
            "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1 AND to_status = 'completed'",
            &order,
        )
        .await;
        assert_eq!(completions, 1);
        // The same batch again (a redelivery after a lost ack): all duplicates, no change.
        let count = "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1";
        let before = scalar(&app, count, &order).await;
        let again = app
            .state
            .ingest
            .submit_many(Via::Mqtt, &items)
            .await
            .unwrap();
        assert!(again.iter().all(|o| *o == Outcome::Duplicate), "{again:?}");
        assert_eq!(scalar(&app, count, &order).await, before);
        assert_eq!(order_status(&app, &order).await, "completed");
        app.stop().await;
    }

    /// The batch knows an order's door evidence from its one read (what earlier batches
    /// recorded) plus its own event: a close in a later batch completes an order whose open
    /// an earlier batch recorded, a close older than that open does not, and a later open
    /// after such a close does. Each step is its own batch (its own transaction).
    pub async fn door_evidence_of_earlier_batches_decides_completion(kind: &DbKind) {
        use DoorChange::{Closed, Opened};
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let gw = Uuid::parse_str(&w.a.gateway_id).unwrap();
        let lock = Uuid::parse_str(&w.a.lock_id).unwrap();
        // (what, batches of (door, offset), status after each batch)
        type Case = (&'static str, Vec<Vec<(DoorChange, i64)>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "open, then close in a later batch",
                vec![vec![(Opened, 100)], vec![(Closed, 400)]],
                vec!["unlocked", "completed"],
            ),
            (
                "a close older than the recorded open, then a newer close",
                vec![vec![(Opened, 100)], vec![(Closed, 50)], vec![(Closed, 400)]],
                vec!["unlocked", "unlocked", "completed"],
            ),
            (
                "a close first, then an older open: no cycle; a newer open: cycle",
                vec![
                    vec![(Closed, 300)],
                    vec![(Opened, 400)],
                    vec![(Opened, 200)],
                ],
                vec!["unlocked", "unlocked", "completed"],
            ),
        ];
        for (what, batches, want) in cases {
            let order = start_order(&app, &w.a, Start::Unlocked).await;
            let t0 = now_ms();
            for (i, batch) in batches.iter().enumerate() {
                let events: Vec<(Uuid, Event)> = batch
                    .iter()
                    .map(|(door, off)| {
                        (
                            Uuid::now_v7(),
                            Event::Door(DoorEvent {
                                lock_id: lock,
                                door: *door,
                                at: u64::try_from(t0 + off).unwrap(),
                            }),
                        )
                    })
                    .collect();
                apply_batch(&app, gw, &events, t0).await;
                assert_eq!(
                    order_status(&app, &order).await,
                    want[i],
                    "{what}: batch {i}"
                );
            }
            let completions = scalar(
                &app,
                "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1 AND to_status = 'completed'",
                &order,
            )
            .await;
            assert_eq!(
                completions,
                i64::from(want.last() == Some(&"completed")),
                "{what}"
            );
            retire(&app, &order).await;
        }
        app.stop().await;
    }

    /// Signed acks through `Ingest::submit_many`: the ack settles its command in one update
    /// (result, latency from the command's own creation time) and the order hook uses the
    /// command it returned. `ok` unlocks; a repeated ack (another message, same command) is
    /// recorded unmatched and moves nothing; a failed ack fails the order over with a
    /// refund; an ack of a command that is not an unlock settles it and touches no order.
    pub async fn acks_through_ingest_settle_the_command_and_move_the_order(kind: &DbKind) {
        let app = TestApp::spawn(kind).await;
        let w = seed_world(&app).await;
        app.state.orders.set_dispatcher(Recorder::new(false));
        let (key, gw) = enrolled_gateway(&app, &w.a).await;
        // A stored command as the dispatch writes it: the token by its id.
        let command = |op: &'static str, token_id: Option<String>| {
            let app = &app;
            let w = &w;
            async move {
                let id = Uuid::now_v7();
                let body = json!({ "op": op, "token_id": token_id }).to_string();
                sqlx::query(
                    "INSERT INTO gateway_commands (id, gateway_id, merchant_id, lock_id, op, body, \
                     key_id, exp_ms, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, 'sent', $8)",
                )
                .bind(id.to_string())
                .bind(w.a.gateway_id.clone())
                .bind(w.a.merchant_id.clone())
                .bind(w.a.lock_id.clone())
                .bind(op)
                .bind(body)
                .bind(now_ms() + 60_000)
                .bind(now_ms() - 250)
                .execute(&app.state.db.pool)
                .await
                .unwrap();
                id
            }
        };
        let token_of = |order: String| {
            let pool = app.state.db.pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>("SELECT token_id FROM orders WHERE id = $1")
                    .bind(order)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        let settled = |cmd: Uuid| {
            let pool = app.state.db.pool.clone();
            async move {
                sqlx::query_as::<_, (String, Option<String>, Option<i64>)>(
                    "SELECT status, result, latency_ms FROM gateway_commands WHERE id = $1",
                )
                .bind(cmd.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        let ack = |cmd: Uuid, result: ResultCode| {
            Message::Ack(Ack {
                cmd,
                result,
                latency_ms: 12,
            })
        };
        let submit = |msgs: Vec<String>| {
            let app = &app;
            async move {
                let items: Vec<(Uuid, &str)> = msgs.iter().map(|m| (gw, m.as_str())).collect();
                app.state
                    .ingest
                    .submit_many(Via::Mqtt, &items)
                    .await
                    .unwrap()
            }
        };

        // 1. ok: the command is settled and the order unlocked, once.
        let order = start_order(&app, &w.a, Start::Unlocking).await;
        let cmd = command("unlock", token_of(order.clone()).await).await;
        let (_, first) = signed(gw, &key, now_ms(), ack(cmd, ResultCode::Ok));
        assert_eq!(submit(vec![first]).await, vec![Outcome::Applied]);
        let (status, result, latency) = settled(cmd).await;
        assert_eq!((status.as_str(), result.as_deref()), ("acked", Some("ok")));
        let latency = latency.unwrap();
        assert!((250..60_000).contains(&latency), "latency {latency} ms");
        assert_eq!(order_status(&app, &order).await, "unlocked");
        // A second ack of the same command (another message): recorded, unmatched, and
        // the order moves no further.
        let (_, again) = signed(gw, &key, now_ms(), ack(cmd, ResultCode::Ok));
        assert_eq!(submit(vec![again]).await, vec![Outcome::Applied]);
        let matched: Vec<i64> = sqlx::query_scalar(
            "SELECT matched FROM gateway_command_acks WHERE command_id = $1 ORDER BY received_at, matched DESC",
        )
        .bind(cmd.to_string())
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
        assert_eq!(matched, vec![1, 0]);
        let to_unlocked =
            "SELECT COUNT(*) FROM order_transitions WHERE order_id = $1 AND to_status = 'unlocked'";
        assert_eq!(scalar(&app, to_unlocked, &order).await, 1);
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM order_unlock_events WHERE order_id = $1 AND source = 'ack'",
                &order
            )
            .await,
            1
        );
        retire(&app, &order).await;

        // 2. A failed ack: unlock_failed with an automatic refund.
        let order = start_order(&app, &w.a, Start::Unlocking).await;
        let cmd = command("unlock", token_of(order.clone()).await).await;
        let (_, failed) = signed(gw, &key, now_ms(), ack(cmd, ResultCode::LockFault));
        assert_eq!(submit(vec![failed]).await, vec![Outcome::Applied]);
        assert_eq!(settled(cmd).await.1.as_deref(), Some("lock_fault"));
        assert_eq!(order_status(&app, &order).await, "unlock_failed");
        assert_eq!(
            scalar(
                &app,
                "SELECT COUNT(*) FROM refunds WHERE order_id = $1",
                &order
            )
            .await,
            1
        );
        retire(&app, &order).await;

        // 3. An ack of another kind of command, even one whose body names an order's token,
        // settles the command and leaves the order alone.
        let order = start_order(&app, &w.a, Start::Unlocking).await;
        let cmd = command("tokens.put", token_of(order.clone()).await).await;
        let (_, other) = signed(gw, &key, now_ms(), ack(cmd, ResultCode::Ok));
        assert_eq!(submit(vec![other]).await, vec![Outcome::Applied]);
        assert_eq!(settled(cmd).await.0, "acked");
        assert_eq!(order_status(&app, &order).await, "unlocking");
        retire(&app, &order).await;
        app.stop().await;
    }
}
