#![allow(clippy::unwrap_used, clippy::expect_used)]
//! How many commits (and so fsyncs) the agent's writes take, and what the cheaper paths keep:
//! an unlock command is two commits (its id, the time anchor, the token use and the
//! `accepted` event together before the latch moves; the outcome event and the ack together
//! after), acknowledged outbox rows are deleted with the next commit or in a commit without
//! an fsync that leaves the connection at `synchronous=FULL`, and the list of fresh rows the
//! MQTT link publishes from holds only committed rows. SQLite's commit hook counts commits.

#[path = "common/agent_harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dmr_edge_agent::agent::{self, commands};
use dmr_protocol::message::{
    Command, DoorChange, DoorEvent, Event, Message, Presenter, ResultCode,
};
use dmr_protocol::topic::TopicKind;
use harness::*;

fn deps(running: &agent::Running) -> commands::CommandDeps {
    let (hb, _) = tokio::sync::watch::channel(Duration::from_secs(30));
    commands::CommandDeps {
        store: running.store.clone(),
        unlocker: running.unlocker.clone(),
        kick: Arc::new(tokio::sync::Notify::new()),
        heartbeat: hb,
        sync_now: Arc::new(tokio::sync::Notify::new()),
    }
}

/// Installs a commit counter on the store's connection.
async fn count_commits(running: &agent::Running) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    running
        .store
        .call(move |db| {
            db.conn().commit_hook(Some(move || {
                c.fetch_add(1, Ordering::SeqCst);
                false
            }))
        })
        .await
        .unwrap();
    n
}

fn door(n: u64) -> Event {
    Event::Door(DoorEvent {
        lock_id: lock_id(1),
        door: if n.is_multiple_of(2) {
            DoorChange::Opened
        } else {
            DoorChange::Closed
        },
        at: now_ms() + n,
    })
}

async fn outbox_seqs(running: &agent::Running) -> Vec<i64> {
    running
        .store
        .call(|db| {
            let mut s = db
                .conn()
                .prepare("SELECT seq FROM outbox ORDER BY seq")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<Vec<i64>, _>>()
                .unwrap()
        })
        .await
        .unwrap()
}

/// An agent on one simulated lock, after the monitor's first polls (lock online) were
/// written, so that counting starts from a quiet store. The directory holds its state.
async fn one_lock_agent() -> (
    dmr_firmware_sim::SimHandle,
    tempfile::TempDir,
    agent::Running,
) {
    let sim = sim(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(dir.path(), sim.tcp_addr().unwrap(), 1, None, "");
    let (running, _) = start_agent(&toml).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (sim, dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_command_takes_two_commits_and_its_id_is_kept_with_the_use() {
    let (sim, _dir, running) = one_lock_agent().await;
    let before_rows = outbox_seqs(&running).await.len();
    let commits = count_commits(&running).await;
    let d = deps(&running);
    let t = token(lock_id(1), 1);
    let (id, jws) = command(Command::Unlock { token: t.to_text() });
    assert_eq!(
        commands::handle(&d, jws.clone()).await,
        Some(ResultCode::Ok)
    );
    assert_eq!(unlock_count(&sim, 1), 1);
    // Before: the command id, the time anchor and the ack were commits of their own, and
    // the use and the outcome one each (5).
    assert_eq!(
        commits.load(Ordering::SeqCst),
        2,
        "commits for one unlock command"
    );
    // What the two commits hold: the id, the use, accepted + ok events and the ack.
    let seen: i64 = running
        .store
        .call(move |db| {
            db.conn()
                .query_row(
                    "SELECT COUNT(*) FROM seen_commands WHERE id = ?1",
                    [id.hyphenated().to_string()],
                    |r| r.get(0),
                )
                .unwrap()
        })
        .await
        .unwrap();
    assert_eq!(seen, 1);
    assert_eq!(count(&running, "SELECT COUNT(*) FROM token_uses").await, 1);
    let rows: Vec<(String, String)> = running
        .store
        .call(|db| {
            let mut s = db
                .conn()
                .prepare("SELECT topic, jws FROM outbox ORDER BY seq")
                .unwrap();
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .await
        .unwrap();
    let new: Vec<String> = rows[before_rows..]
        .iter()
        .map(|(topic, jws)| match open_gw(jws).message {
            Message::Event(Event::Unlock(u)) => format!("{topic}:{}", u.result.as_str()),
            Message::Ack(a) => {
                assert_eq!(a.cmd, id);
                format!("{topic}:{}", a.result.as_str())
            }
            other => format!("{topic}:{other:?}"),
        })
        .collect();
    assert_eq!(new, vec!["event:accepted", "event:ok", "ack:ok"]);
    // Redelivered: dropped by its id, the latch does not move again.
    assert_eq!(commands::handle(&d, jws).await, None);
    assert_eq!(unlock_count(&sim, 1), 1);
    // A refused unlock still answers with an ack (written alone).
    let (id2, again) = command(Command::Unlock { token: t.to_text() });
    assert_eq!(commands::handle(&d, again).await, Some(ResultCode::UsedUp));
    let acks: Vec<(uuid::Uuid, ResultCode)> = running
        .store
        .call(|db| {
            let mut s = db
                .conn()
                .prepare("SELECT jws FROM outbox WHERE topic = 'ack' ORDER BY seq")
                .unwrap();
            s.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .await
        .unwrap()
        .iter()
        .filter_map(|j| match open_gw(j).message {
            Message::Ack(a) => Some((a.cmd, a.result)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(id, ResultCode::Ok), (id2, ResultCode::UsedUp)]);
    assert_eq!(unlock_count(&sim, 1), 1);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_unlock_is_still_two_commits_use_first() {
    let (sim, _dir, running) = one_lock_agent().await;
    let commits = count_commits(&running).await;
    let t = token(lock_id(1), 1);
    let r = running.unlocker.present(&t.to_text(), Presenter::Lan).await;
    assert_eq!(r.result, ResultCode::Ok);
    assert_eq!(commits.load(Ordering::SeqCst), 2);
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rows_go_with_the_next_commit_or_lazily_and_full_sync_stays() {
    let (sim, _dir, running) = one_lock_agent().await;
    let store = running.store.clone();
    let base = outbox_seqs(&running).await;
    store.delivered(&base);
    store.flush_delivered().await.unwrap();
    assert!(outbox_seqs(&running).await.is_empty());
    for i in 0..3 {
        store.append_event(door(i)).await.unwrap();
    }
    let seqs = outbox_seqs(&running).await;
    assert_eq!(seqs.len(), 3);
    let commits = count_commits(&running).await;
    // Handed over: nothing is written for it by itself.
    store.delivered(&seqs[..2]);
    assert_eq!(store.delivered_waiting().0, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outbox_seqs(&running).await, seqs);
    assert_eq!(commits.load(Ordering::SeqCst), 0);
    // The next event's commit takes the deletions along: one commit for all of it.
    store.append_event(door(3)).await.unwrap();
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    assert_eq!(store.delivered_waiting().0, 0);
    let now = outbox_seqs(&running).await;
    assert_eq!(now.len(), 2);
    assert_eq!(now[0], seqs[2]);
    // Alone: one commit of its own, after which every commit is durable again.
    store.delivered(&now[..1]);
    store.flush_delivered().await.unwrap();
    assert_eq!(commits.load(Ordering::SeqCst), 2);
    assert_eq!(outbox_seqs(&running).await, now[1..].to_vec());
    let sync: i64 = store
        .call(|db| db.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sync, 2, "synchronous is FULL again");
    // The backlog figure does not count delivered rows waiting for deletion.
    store.delivered(&now[1..]);
    let stats = store.call(|db| db.outbox_stats()).await.unwrap().unwrap();
    assert_eq!(stats.pending, 0);
    assert!(outbox_seqs(&running).await.is_empty());
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_rows_for_the_link_are_committed_rows_only_in_order() {
    let (sim, _dir, running) = one_lock_agent().await;
    let store = running.store.clone();
    let _ = store.take_fresh(0, usize::MAX);
    let a = store.append_event(door(0)).await.unwrap();
    // A group whose commit fails: its row was written, then rolled back.
    let (_, commit) = store
        .call_grouped(|db| {
            db.append_event(door(1)).unwrap();
            db.conn().execute_batch("ROLLBACK").unwrap();
        })
        .await
        .unwrap();
    assert!(commit.is_err(), "the group's commit failed");
    let b = store
        .append_all(vec![
            (TopicKind::Event, Some(lock_id(1)), Message::Event(door(2))),
            (TopicKind::Event, Some(lock_id(1)), Message::Event(door(3))),
        ])
        .await
        .unwrap();
    let seqs = outbox_seqs(&running).await;
    assert_eq!(seqs.len(), 3, "the rolled-back row is not in the outbox");
    let fresh = store.take_fresh(0, 10).unwrap();
    let ids: Vec<uuid::Uuid> = fresh.iter().map(|r| open_gw(&r.jws).id).collect();
    assert_eq!(ids, vec![a, b[0], b[1]], "committed rows only, in order");
    assert_eq!(fresh.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    // Taken rows are gone; rows at or before the link's position are skipped.
    assert!(store.take_fresh(0, 10).unwrap().is_empty());
    let c = store.append_event(door(4)).await.unwrap();
    let d = store.append_event(door(5)).await.unwrap();
    let after_c = outbox_seqs(&running).await[3];
    let rest = store.take_fresh(after_c, 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(open_gw(&rest[0].jws).id, d);
    assert_ne!(c, d);
    // Past the bound the list says so once, then starts over.
    let many: Vec<_> = (0..1100)
        .map(|i| (TopicKind::Event, Some(lock_id(1)), Message::Event(door(i))))
        .collect();
    store.append_all(many).await.unwrap();
    assert!(store.take_fresh(0, 10).is_none(), "overflow reported");
    assert!(store.take_fresh(0, 10).unwrap().is_empty());
    running.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}
