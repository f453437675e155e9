//! The shared routing state of the broker: who is connected (one entry per client id, so a
//! second CONNECT with the same id takes the session over), the subscription tree, the
//! shared-subscription groups and the retained messages. It lives behind one mutex held
//! only for map operations and non-blocking `try_send`s, never across an `.await`: a slow
//! subscriber cannot stall a publisher, it is kicked when its bounded queue is full.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, oneshot};

use crate::Stats;
use crate::ack::{AckLink, Receipt};
use crate::topic::matches;

pub(crate) type ClientId = Arc<str>;

/// A message as routed: shared by every subscriber it goes to.
#[derive(Debug)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Bytes,
}

/// One message queued for one subscriber, at the QoS it gets. Not `Clone`: a copy with a
/// receipt is one delivery that must be acknowledged, so copies are only made by routing.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// This copy's share of its publisher's PUBACK (QoS 1 copies, with
    /// `ack_after_delivery`): settled when the subscriber acknowledges it.
    pub receipt: Option<Receipt>,
}

/// Why the router ends a connection from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection presented the same client id.
    TakenOver,
    /// Its queue was full: it does not read fast enough.
    Slow,
}

#[derive(Debug)]
struct SessionEntry {
    conn_id: u64,
    /// Who logged in; only the same user may take the client id over.
    username: Option<String>,
    tx: mpsc::Sender<Outgoing>,
    kick: Option<oneshot::Sender<Kick>>,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<(ClientId, QoS)>,
    next: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    subs: HashMap<ClientId, QoS>,
    groups: HashMap<String, Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.groups.is_empty()
    }

    fn insert(&mut self, levels: &[&str], client: &ClientId, group: Option<&str>, qos: QoS) {
        match levels.split_first() {
            Some((first, rest)) => self
                .children
                .entry((*first).to_string())
                .or_default()
                .insert(rest, client, group, qos),
            None => match group {
                None => {
                    self.subs.insert(client.clone(), qos);
                }
                Some(g) => {
                    let group = self.groups.entry(g.to_string()).or_default();
                    match group.members.iter_mut().find(|(c, _)| c == client) {
                        Some(m) => m.1 = qos,
                        None => group.members.push((client.clone(), qos)),
                    }
                }
            },
        }
    }

    /// Removes one subscription; prunes nodes left empty. True if it existed.
    fn remove(&mut self, levels: &[&str], client: &ClientId, group: Option<&str>) -> bool {
        match levels.split_first() {
            Some((first, rest)) => {
                let Some(child) = self.children.get_mut(*first) else {
                    return false;
                };
                let removed = child.remove(rest, client, group);
                if child.is_empty() {
                    self.children.remove(*first);
                }
                removed
            }
            None => match group {
                None => self.subs.remove(client).is_some(),
                Some(g) => {
                    let Some(grp) = self.groups.get_mut(g) else {
                        return false;
                    };
                    let before = grp.members.len();
                    grp.members.retain(|(c, _)| c != client);
                    let removed = grp.members.len() != before;
                    if grp.members.is_empty() {
                        self.groups.remove(g);
                    }
                    removed
                }
            },
        }
    }

    fn collect_here<'a>(
        subs: &HashMap<ClientId, QoS>,
        groups: &'a mut HashMap<String, Group>,
        out: &mut Targets<'a>,
    ) {
        for (c, q) in subs {
            let e = out.direct.entry(c.clone()).or_insert(*q);
            if *q > *e {
                *e = *q;
            }
        }
        for g in groups.values_mut() {
            if !g.members.is_empty() {
                let start = g.next % g.members.len();
                g.next = g.next.wrapping_add(1);
                out.groups.push((&g.members, start));
            }
        }
    }

    fn collect<'a>(&'a mut self, levels: &[&str], first_level: bool, out: &mut Targets<'a>) {
        let Node {
            children,
            subs,
            groups,
        } = self;
        let Some((first, rest)) = levels.split_first() else {
            // "a/#" also matches "a" (§4.7.1.2).
            if let Some(hash) = children.get_mut("#") {
                Node::collect_here(&hash.subs, &mut hash.groups, out);
            }
            Node::collect_here(subs, groups, out);
            return;
        };
        let dollar = first_level && first.starts_with('$');
        // Split the borrow: visit the exact child, then the wildcard children.
        let mut exact = None;
        let mut plus = None;
        let mut hash = None;
        for (k, v) in children.iter_mut() {
            if k == first {
                exact = Some(v);
            } else if k == "+" && !dollar {
                plus = Some(v);
            } else if k == "#" && !dollar {
                hash = Some(v);
            }
        }
        if let Some(c) = exact {
            c.collect(rest, false, out);
        }
        if let Some(c) = plus {
            c.collect(rest, false, out);
        }
        if let Some(c) = hash {
            Node::collect_here(&c.subs, &mut c.groups, out);
        }
    }
}

#[derive(Default)]
struct Targets<'a> {
    direct: HashMap<ClientId, QoS>,
    groups: Vec<(&'a Vec<(ClientId, QoS)>, usize)>,
}

#[derive(Debug)]
struct Retained {
    msg: Arc<Message>,
    qos: QoS,
}

/// Everything connections share.
#[derive(Debug, Default)]
pub(crate) struct Router {
    sessions: HashMap<ClientId, SessionEntry>,
    tree: Node,
    /// Each client's subscriptions (group, filter), to drop them when it goes.
    filters: HashMap<ClientId, Vec<(Option<String>, String)>>,
    retained: HashMap<String, Retained>,
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if a < b { a } else { b }
}

impl Router {
    /// Registers a connection; a previous one with the same client id is told to go and its
    /// subscriptions are dropped (every session is clean, see the crate docs). A client id
    /// held by another user is refused (`Err`), so one client cannot knock another (the
    /// cloud's bridge, say) off the broker by borrowing its id.
    pub fn register(
        &mut self,
        client: &ClientId,
        username: Option<&str>,
        conn_id: u64,
        tx: mpsc::Sender<Outgoing>,
        kick: oneshot::Sender<Kick>,
    ) -> Result<bool, ()> {
        if let Some(existing) = self.sessions.get(client)
            && existing.username.as_deref() != username
        {
            return Err(());
        }
        let entry = SessionEntry {
            conn_id,
            username: username.map(str::to_string),
            tx,
            kick: Some(kick),
        };
        let old = self.sessions.insert(client.clone(), entry);
        let took_over = match old {
            Some(mut old) => {
                if let Some(k) = old.kick.take() {
                    let _ = k.send(Kick::TakenOver);
                }
                true
            }
            None => false,
        };
        self.drop_filters(client);
        Ok(took_over)
    }

    /// Removes a connection unless a newer one has taken its client id.
    pub fn unregister(&mut self, client: &ClientId, conn_id: u64) {
        if self
            .sessions
            .get(client)
            .is_some_and(|s| s.conn_id == conn_id)
        {
            self.sessions.remove(client);
            self.drop_filters(client);
        }
    }

    fn drop_filters(&mut self, client: &ClientId) {
        if let Some(list) = self.filters.remove(client) {
            for (group, filter) in list {
                let levels: Vec<&str> = filter.split('/').collect();
                self.tree.remove(&levels, client, group.as_deref());
            }
        }
    }

    pub fn connected(&self) -> usize {
        self.sessions.len()
    }

    /// Adds a subscription and returns the retained messages it should get now (none for a
    /// shared subscription: a group shares live traffic, not history).
    pub fn subscribe(
        &mut self,
        client: &ClientId,
        group: Option<&str>,
        filter: &str,
        qos: QoS,
    ) -> Vec<Outgoing> {
        let levels: Vec<&str> = filter.split('/').collect();
        self.tree.insert(&levels, client, group, qos);
        let list = self.filters.entry(client.clone()).or_default();
        let key = (group.map(str::to_string), filter.to_string());
        if !list.contains(&key) {
            list.push(key);
        }
        if group.is_some() {
            return Vec::new();
        }
        self.retained
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, r)| Outgoing {
                msg: r.msg.clone(),
                qos: min_qos(r.qos, qos),
                retain: true,
                receipt: None,
            })
            .collect()
    }

    pub fn unsubscribe(&mut self, client: &ClientId, group: Option<&str>, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        self.tree.remove(&levels, client, group);
        if let Some(list) = self.filters.get_mut(client) {
            list.retain(|(g, f)| !(g.as_deref() == group && f == filter));
        }
    }

    /// Stores (or, with an empty payload, clears) the retained message of a topic.
    pub fn retain(&mut self, msg: &Arc<Message>, qos: QoS) {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
        } else {
            self.retained.insert(
                msg.topic.clone(),
                Retained {
                    msg: msg.clone(),
                    qos,
                },
            );
        }
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Queues a message for every matching subscriber without waiting. Subscribers whose
    /// queue is full come back as [`Blocked`]: the publishing connection then waits for room
    /// (outside this lock, which throttles the publisher through TCP) and kicks the
    /// subscriber if none comes in time. Returns how many got it now, and the blocked ones.
    /// With `ack`, every copy that goes out at QoS 1 carries a [`Receipt`] of it.
    pub fn route(
        &mut self,
        msg: &Arc<Message>,
        qos: QoS,
        ack: Option<&Arc<AckLink>>,
    ) -> (usize, Vec<Blocked>) {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        let mut targets = Targets::default();
        self.tree.collect(&levels, true, &mut targets);
        let Targets { direct, groups } = targets;
        let sessions = &mut self.sessions;
        let mut delivered = 0;
        let mut blocked = Vec::new();
        let offer = |client: &ClientId, sub_qos: QoS| -> Offer {
            let Some(s) = sessions.get(client) else {
                return Offer::Gone;
            };
            let qos = min_qos(qos, sub_qos);
            let out = Outgoing {
                msg: msg.clone(),
                qos,
                retain: false,
                receipt: ack.filter(|_| qos == QoS::AtLeastOnce).map(Receipt::new),
            };
            match s.tx.try_send(out) {
                Ok(()) => Offer::Sent,
                Err(mpsc::error::TrySendError::Full(out)) => Offer::Full(Blocked {
                    client: client.clone(),
                    tx: s.tx.clone(),
                    out,
                }),
                Err(mpsc::error::TrySendError::Closed(out)) => {
                    discard(out);
                    Offer::Gone
                }
            }
        };
        for (client, sub_qos) in &direct {
            match offer(client, *sub_qos) {
                Offer::Sent => delivered += 1,
                Offer::Full(b) => blocked.push(b),
                Offer::Gone => {}
            }
        }
        for (members, start) in groups {
            // Round robin; a member that cannot take it passes it on to the next, and if
            // none can, the publisher waits for the one whose turn it was.
            let n = members.len();
            let mut first_full = None;
            let mut sent = false;
            for i in 0..n {
                let (client, sub_qos) = &members[(start + i) % n];
                match offer(client, *sub_qos) {
                    Offer::Sent => {
                        sent = true;
                        break;
                    }
                    Offer::Full(b) => {
                        if first_full.is_none() {
                            first_full = Some(b);
                        } else {
                            discard(b.out);
                        }
                    }
                    Offer::Gone => {}
                }
            }
            if sent {
                delivered += 1;
                if let Some(b) = first_full {
                    discard(b.out);
                }
            } else if let Some(b) = first_full {
                blocked.push(b);
            }
        }
        (delivered, blocked)
    }

    /// Disconnects a subscriber that did not make room in time.
    pub fn kick_slow(&mut self, client: &ClientId, stats: &Stats) {
        if let Some(s) = self.sessions.get_mut(client)
            && let Some(k) = s.kick.take()
        {
            let _ = k.send(Kick::Slow);
            stats.slow_disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A copy that was made but never queued for anyone: not a copy that got lost, so its
/// receipt (if any) is discarded rather than dropped.
fn discard(out: Outgoing) {
    if let Some(r) = out.receipt {
        r.discard();
    }
}

/// A message a subscriber had no room for yet.
#[derive(Debug)]
pub(crate) struct Blocked {
    pub client: ClientId,
    pub tx: mpsc::Sender<Outgoing>,
    pub out: Outgoing,
}

#[derive(Debug)]
enum Offer {
    Sent,
    Full(Blocked),
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Router {
        /// Delivered count, for tests that expect nothing blocked.
        fn route_n(&mut self, m: &Arc<Message>, q: QoS) -> usize {
            self.route(m, q, None).0
        }
    }

    fn client(r: &mut Router, id: &str, cap: usize) -> (ClientId, mpsc::Receiver<Outgoing>) {
        let id: ClientId = Arc::from(id);
        let (tx, rx) = mpsc::channel(cap);
        let (k, _) = oneshot::channel();
        r.register(&id, None, 1, tx, k).unwrap();
        (id, rx)
    }

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
        })
    }

    #[test]
    fn wildcards_and_dedup() {
        let mut r = Router::default();
        let (a, mut ra) = client(&mut r, "a", 8);
        r.subscribe(&a, None, "x/+/z", QoS::AtMostOnce);
        r.subscribe(&a, None, "x/#", QoS::AtLeastOnce);
        assert_eq!(r.route_n(&msg("x/y/z"), QoS::AtLeastOnce), 1);
        let got = ra.try_recv().unwrap();
        assert_eq!(got.qos, QoS::AtLeastOnce, "highest matching QoS wins");
        assert!(ra.try_recv().is_err(), "one copy per client");
        assert_eq!(r.route_n(&msg("x"), QoS::AtMostOnce), 1, "x/# matches x");
        assert_eq!(r.route_n(&msg("y/y/z"), QoS::AtMostOnce), 0);
        r.unsubscribe(&a, None, "x/#");
        r.unsubscribe(&a, None, "x/+/z");
        assert_eq!(r.route_n(&msg("x/y/z"), QoS::AtMostOnce), 0);
        assert!(r.tree.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn shared_round_robin_and_full_member_passes_on() {
        let mut r = Router::default();
        let (a, mut ra) = client(&mut r, "a", 1);
        let (b, mut rb) = client(&mut r, "b", 100);
        r.subscribe(&a, Some("g"), "t/+", QoS::AtLeastOnce);
        r.subscribe(&b, Some("g"), "t/+", QoS::AtLeastOnce);
        for _ in 0..4 {
            assert_eq!(r.route_n(&msg("t/1"), QoS::AtLeastOnce), 1);
        }
        // a holds one message (its capacity), b got the rest, nothing was lost.
        let mut na = 0;
        while ra.try_recv().is_ok() {
            na += 1;
        }
        let mut nb = 0;
        while rb.try_recv().is_ok() {
            nb += 1;
        }
        assert_eq!((na, nb), (1, 3), "nothing blocked, nothing lost");
    }

    /// With a publisher's link: each queued QoS 1 copy carries a receipt, copies offered to a
    /// group member that could not take them are discarded (not lost), and the publisher
    /// hears "delivered" once the copies it handed out are settled.
    #[test]
    fn receipts_count_only_the_copies_handed_out() {
        let mut r = Router::default();
        let (full, rf) = client(&mut r, "full", 1);
        let (b, mut rb) = client(&mut r, "b", 8);
        let (direct, mut rd) = client(&mut r, "direct", 8);
        r.subscribe(&full, Some("g"), "t/+", QoS::AtLeastOnce);
        r.subscribe(&b, Some("g"), "t/+", QoS::AtLeastOnce);
        r.subscribe(&direct, None, "t/+", QoS::AtMostOnce);
        // Fill `full`'s one-message queue (the round robin reaches it within two messages),
        // so a later offer to it comes back full and passes on to b.
        while rf.is_empty() {
            let (n, blocked) = r.route(&msg("t/0"), QoS::AtLeastOnce, None);
            assert_eq!((n, blocked.len()), (2, 0));
            while rb.try_recv().is_ok() {}
            while rd.try_recv().is_ok() {}
        }
        assert_eq!(rf.len(), 1, "the first member is full");

        // Two messages, so the group's turn starts at each member once: when it is `full`'s,
        // its copy comes back full and is discarded, and b takes the message.
        for pkid in [5, 7] {
            let (tx, mut outcomes) = mpsc::unbounded_channel();
            let link = crate::ack::AckLink::new(pkid, tx);
            let (n, blocked) = r.route(&msg("t/1"), QoS::AtLeastOnce, Some(&link));
            assert_eq!((n, blocked.len()), (2, 0), "b and the direct subscriber");
            assert_eq!(link.copies(), 1, "one QoS 1 copy; QoS 0 needs no receipt");
            drop(link);
            assert!(outcomes.try_recv().is_err(), "b has not acknowledged yet");
            assert!(rd.try_recv().unwrap().receipt.is_none());
            rb.try_recv().unwrap().receipt.unwrap().settle();
            assert_eq!(outcomes.try_recv().unwrap(), (pkid, true));
        }

        // A copy dropped unsettled (its subscriber went away holding it): lost.
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let link = crate::ack::AckLink::new(6, tx);
        r.route(&msg("t/2"), QoS::AtLeastOnce, Some(&link));
        drop(link);
        drop(rb);
        while rd.try_recv().is_ok() {}
        assert_eq!(outcomes.try_recv().unwrap(), (6, false));
    }

    #[test]
    fn dollar_topics_need_explicit_filters() {
        let mut r = Router::default();
        let (a, _ra) = client(&mut r, "a", 8);
        r.subscribe(&a, None, "#", QoS::AtMostOnce);
        r.subscribe(&a, None, "+/x", QoS::AtMostOnce);
        assert_eq!(r.route_n(&msg("$SYS/x"), QoS::AtMostOnce), 0);
        r.subscribe(&a, None, "$SYS/+", QoS::AtMostOnce);
        assert_eq!(r.route_n(&msg("$SYS/x"), QoS::AtMostOnce), 1);
    }

    #[test]
    fn takeover_drops_old_subscriptions_and_old_unregister_is_ignored() {
        let mut r = Router::default();
        let id: ClientId = Arc::from("c");
        let (tx1, _rx1) = mpsc::channel(8);
        let (k1, mut kick1) = oneshot::channel();
        assert!(!r.register(&id, Some("u"), 1, tx1, k1).unwrap());
        r.subscribe(&id, None, "a", QoS::AtMostOnce);
        let (tx2, mut rx2) = mpsc::channel(8);
        let (k2, _kick2) = oneshot::channel();
        let (tx_other, _rx_other) = mpsc::channel(8);
        let (k_other, _) = oneshot::channel();
        assert!(
            r.register(&id, Some("intruder"), 9, tx_other, k_other)
                .is_err(),
            "another user cannot take the id over"
        );
        assert!(r.register(&id, Some("u"), 2, tx2, k2).unwrap());
        assert_eq!(kick1.try_recv().unwrap(), Kick::TakenOver);
        assert_eq!(r.route_n(&msg("a"), QoS::AtMostOnce), 0);
        r.subscribe(&id, None, "a", QoS::AtMostOnce);
        r.unregister(&id, 1); // the old connection's cleanup must not touch the new one
        assert_eq!(r.route_n(&msg("a"), QoS::AtMostOnce), 1);
        assert!(rx2.try_recv().is_ok());
        r.unregister(&id, 2);
        assert_eq!(r.connected(), 0);
        assert!(r.tree.is_empty());
    }

    #[test]
    fn retained_set_match_and_clear() {
        let mut r = Router::default();
        let (a, _ra) = client(&mut r, "a", 8);
        r.retain(&msg("s/1"), QoS::AtLeastOnce);
        r.retain(&msg("s/2"), QoS::AtMostOnce);
        let got = r.subscribe(&a, None, "s/+", QoS::AtLeastOnce);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|o| o.retain));
        assert!(
            r.subscribe(&a, Some("g"), "s/+", QoS::AtLeastOnce)
                .is_empty()
        );
        let clear = Arc::new(Message {
            topic: "s/1".into(),
            payload: Bytes::new(),
        });
        r.retain(&clear, QoS::AtMostOnce);
        assert_eq!(r.retained_count(), 1);
    }

    #[test]
    fn full_queue_blocks_and_kick_slow_disconnects() {
        let mut r = Router::default();
        let stats = Stats::default();
        let id: ClientId = Arc::from("slow");
        let (tx, _rx) = mpsc::channel(1);
        let (k, mut kick) = oneshot::channel();
        r.register(&id, None, 1, tx, k).unwrap();
        r.subscribe(&id, None, "t", QoS::AtMostOnce);
        assert_eq!(r.route_n(&msg("t"), QoS::AtMostOnce), 1);
        let (n, blocked) = r.route(&msg("t"), QoS::AtMostOnce, None);
        assert_eq!((n, blocked.len()), (0, 1));
        assert_eq!(&*blocked[0].client, "slow");
        r.kick_slow(&id, &stats);
        assert_eq!(kick.try_recv().unwrap(), Kick::Slow);
        assert_eq!(stats.slow_disconnects.load(Ordering::Relaxed), 1);
    }
}
