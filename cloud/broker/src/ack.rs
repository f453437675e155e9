//! End-to-end acknowledgement of QoS 1 publishes ([`crate::BrokerConfig::ack_after_delivery`]).
//!
//! Why: a broker that PUBACKs as soon as it has queued a message in memory becomes the only
//! holder of it, and a publisher that deletes what was acknowledged (a gateway's outbox does)
//! loses it if the broker's process dies before the subscriber has taken it. With this on,
//! for the topics the publisher's ACL says must reach a consumer ([`crate::Acl::needs_consumer`]),
//! the publisher's PUBACK waits until every QoS 1 subscriber that got a copy has PUBACKed
//! its copy; the subscriber acknowledges only what it has made durable, so the publisher
//! keeps its message until then. If any copy is lost instead (its subscriber went away, or
//! was too slow and was kicked), or there was no subscriber to take it, the publisher's
//! connection is closed, and it publishes again from its own store after reconnecting.
//! Other topics are acknowledged at once, so a command to a gateway that drops its
//! connection does not take the cloud's connection down with it.
//!
//! Shape: one [`AckLink`] per publish, shared by [`Receipt`]s, one per QoS 1 copy. A copy
//! that is acknowledged settles its receipt; a receipt dropped unsettled (wherever the copy
//! was: a subscriber's queue, its in-flight map, a blocked hand-over) marks the link lost.
//! When the last holder lets go of the link, its outcome goes to the publisher's session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// What became of one publish: its packet id, and whether every copy was acknowledged.
pub(crate) type Outcome = (u16, bool);

/// One publish awaiting its subscribers.
#[derive(Debug)]
pub(crate) struct AckLink {
    pkid: u16,
    to: mpsc::UnboundedSender<Outcome>,
    lost: AtomicBool,
    /// Copies handed to subscribers (queued or waiting for room), settled or not. Counted
    /// rather than read off the Arc's strong count, which a fast subscriber's settle would
    /// lower before the publisher looked.
    copies: AtomicUsize,
}

impl AckLink {
    pub fn new(pkid: u16, to: mpsc::UnboundedSender<Outcome>) -> Arc<AckLink> {
        Arc::new(AckLink {
            pkid,
            to,
            lost: AtomicBool::new(false),
            copies: AtomicUsize::new(0),
        })
    }

    /// How many copies went to subscribers.
    pub fn copies(&self) -> usize {
        self.copies.load(Ordering::Relaxed)
    }

    /// Marks the publish as undeliverable (no subscriber that must take it).
    pub fn lose(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }
}

impl Drop for AckLink {
    fn drop(&mut self) {
        // The publisher's session may be gone already; then there is nobody to tell, and
        // it publishes again after reconnecting because it never got the PUBACK.
        let _ = self
            .to
            .send((self.pkid, !self.lost.load(Ordering::Relaxed)));
    }
}

/// One QoS 1 copy's share of a publish: settled when its subscriber acknowledges it.
#[derive(Debug)]
pub(crate) struct Receipt {
    link: Arc<AckLink>,
    settled: bool,
}

impl Receipt {
    pub fn new(link: &Arc<AckLink>) -> Receipt {
        link.copies.fetch_add(1, Ordering::Relaxed);
        Receipt {
            link: link.clone(),
            settled: false,
        }
    }

    /// The subscriber acknowledged this copy.
    pub fn settle(mut self) {
        self.settled = true;
    }

    /// This copy was made but never went to anyone (its subscriber was gone, or another
    /// member of a shared group took the message): neither delivered nor lost.
    pub fn discard(mut self) {
        self.link.copies.fetch_sub(1, Ordering::Relaxed);
        self.settled = true;
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.settled {
            self.link.lose();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_copies_ack_and_a_dropped_one_loses() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let link = AckLink::new(7, tx.clone());
        let (a, b) = (Receipt::new(&link), Receipt::new(&link));
        drop(link);
        a.settle();
        assert!(rx.try_recv().is_err(), "b still holds the publish");
        b.settle();
        assert_eq!(rx.try_recv().unwrap(), (7, true));

        let link = AckLink::new(8, tx.clone());
        let (a, b) = (Receipt::new(&link), Receipt::new(&link));
        drop(link);
        a.settle();
        drop(b);
        assert_eq!(rx.try_recv().unwrap(), (8, false));

        // A discarded copy is no copy.
        let link = AckLink::new(11, tx.clone());
        Receipt::new(&link).discard();
        assert_eq!(link.copies(), 0);
        drop(link);
        assert_eq!(rx.try_recv().unwrap(), (11, true));

        // No copy at all: acknowledged as soon as the publisher lets go, unless marked lost.
        drop(AckLink::new(9, tx.clone()));
        assert_eq!(rx.try_recv().unwrap(), (9, true));
        let link = AckLink::new(10, tx);
        link.lose();
        drop(link);
        assert_eq!(rx.try_recv().unwrap(), (10, false));
    }
}
