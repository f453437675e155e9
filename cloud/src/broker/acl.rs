//! The one MQTT access policy, shared by the embedded broker and the EMQX HTTP hooks so the
//! two can never disagree. Identities come from the MQTT username: `dmr-cloud` is the cloud
//! itself (everything allowed), `gw:<gateway uuid>` a gateway. A gateway may publish only to
//! `dmr/v1/gw/<own id>/{state,heartbeat,event,ack}` (its Last Will is one of these) and
//! subscribe only to `dmr/v1/gw/<own id>/cmd`, spelled exactly: no wildcards, no `$share`.
//! Anything else is denied, which is what stops one gateway from forging another's events
//! or reading another's commands even before signatures are checked.

use uuid::Uuid;

/// The username the cloud's own MQTT connection uses.
pub const CLOUD_USERNAME: &str = "dmr-cloud";
/// Prefix of every gateway topic.
pub const TOPIC_ROOT: &str = "dmr/v1/gw/";
/// What a gateway publishes.
pub const GATEWAY_PUBLISH: [&str; 4] = ["state", "heartbeat", "event", "ack"];

/// Who is on the other end of an MQTT connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    Cloud,
    Gateway(Uuid),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    /// The EMQX spelling (`publish` / `subscribe`).
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "publish" => Some(Action::Publish),
            "subscribe" => Some(Action::Subscribe),
            _ => None,
        }
    }
}

/// The identity a username claims; `None` for a name that is neither form. The uuid must
/// be the canonical lower-case hyphenated text, the same text the topics carry.
pub fn principal_of(username: &str) -> Option<Principal> {
    if username == CLOUD_USERNAME {
        return Some(Principal::Cloud);
    }
    let id = username.strip_prefix("gw:")?;
    let uuid = Uuid::parse_str(id).ok()?;
    (uuid.to_string() == id).then_some(Principal::Gateway(uuid))
}

/// The username of a gateway (what enrollment hands out).
pub fn gateway_username(id: Uuid) -> String {
    format!("gw:{id}")
}

/// May `who` do `action` on `topic` (a topic name to publish, a filter to subscribe)?
pub fn allowed(who: &Principal, action: Action, topic: &str) -> bool {
    match who {
        Principal::Cloud => true,
        Principal::Gateway(id) => {
            let Some(rest) = topic
                .strip_prefix(TOPIC_ROOT)
                .and_then(|r| r.strip_prefix(id.to_string().as_str()))
                .and_then(|r| r.strip_prefix('/'))
            else {
                return false;
            };
            match action {
                Action::Publish => GATEWAY_PUBLISH.contains(&rest),
                Action::Subscribe => rest == "cmd",
            }
        }
    }
}

impl dmr_broker::Acl for Principal {
    fn may_publish(&self, topic: &str) -> bool {
        allowed(self, Action::Publish, topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        allowed(self, Action::Subscribe, filter)
    }
    /// A gateway's `event` and `ack` come from its outbox, which forgets a message once it
    /// is PUBACKed: the embedded broker holds that PUBACK until the cloud's bridge has
    /// committed the message, so a crash of `dmr-cloud` in between loses nothing.
    fn needs_consumer(&self, topic: &str) -> bool {
        matches!(self, Principal::Gateway(_))
            && (topic.ends_with("/event") || topic.ends_with("/ack"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0b6c1f1e-6a43-4c1e-9d55-1f2b3c4d5e6f";
    const B: &str = "7d0f6a3c-1111-4222-8333-944455556666";

    fn gw(s: &str) -> Principal {
        Principal::Gateway(Uuid::parse_str(s).unwrap())
    }

    #[test]
    fn usernames() {
        assert_eq!(principal_of("dmr-cloud"), Some(Principal::Cloud));
        assert_eq!(principal_of(&format!("gw:{A}")), Some(gw(A)));
        assert_eq!(
            gateway_username(Uuid::parse_str(A).unwrap()),
            format!("gw:{A}")
        );
        for bad in [
            "",
            "gw:",
            "gw:nope",
            "dmr-cloud ",
            "DMR-CLOUD",
            "cloud",
            A,
            "gw:0B6C1F1E-6A43-4C1E-9D55-1F2B3C4D5E6F", // not the topic spelling
            "gw:0b6c1f1e6a434c1e9d551f2b3c4d5e6f",     // simple form, likewise
            "gw:{0b6c1f1e-6a43-4c1e-9d55-1f2b3c4d5e6f}",
        ] {
            assert_eq!(principal_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cloud_may_do_everything() {
        for action in [Action::Publish, Action::Subscribe] {
            for t in [
                "dmr/v1/gw/+/state",
                "$share/dmr-cloud/dmr/v1/gw/+/event",
                &format!("dmr/v1/gw/{A}/cmd"),
                "#",
                "anything",
            ] {
                assert!(allowed(&Principal::Cloud, action, t), "{action:?} {t}");
            }
        }
    }

    #[test]
    fn gateway_publishes_only_its_own_four_topics() {
        let me = gw(A);
        for leaf in GATEWAY_PUBLISH {
            assert!(allowed(
                &me,
                Action::Publish,
                &format!("dmr/v1/gw/{A}/{leaf}")
            ));
            assert!(
                !allowed(&me, Action::Publish, &format!("dmr/v1/gw/{B}/{leaf}")),
                "foreign {leaf}"
            );
        }
        for t in [
            format!("dmr/v1/gw/{A}/cmd"), // commands come from the cloud only
            format!("dmr/v1/gw/{A}/state/x"),
            format!("dmr/v1/gw/{A}/"),
            format!("dmr/v1/gw/{A}"),
            format!("dmr/v1/gw/{A}x/state"),
            format!("dmr/v1/gw/{A}/State"),
            format!("dmr/v2/gw/{A}/state"),
            format!("/dmr/v1/gw/{A}/state"),
            format!("dmr/v1/gw/{}/state", A.to_uppercase()),
            "dmr/v1/gw/+/state".into(),
            format!("dmr/v1/gw/{A}/+"),
            format!("dmr/v1/gw/{A}/#"),
            "state".into(),
            String::new(),
        ] {
            assert!(!allowed(&me, Action::Publish, &t), "{t}");
        }
    }

    #[test]
    fn gateway_subscribes_only_its_own_cmd() {
        let me = gw(A);
        assert!(allowed(
            &me,
            Action::Subscribe,
            &format!("dmr/v1/gw/{A}/cmd")
        ));
        for f in [
            format!("dmr/v1/gw/{B}/cmd"),
            "dmr/v1/gw/+/cmd".into(),
            "dmr/v1/gw/#".into(),
            format!("dmr/v1/gw/{A}/#"),
            format!("dmr/v1/gw/{A}/+"),
            format!("dmr/v1/gw/{A}/state"),
            format!("dmr/v1/gw/{A}/event"),
            format!("$share/g/dmr/v1/gw/{A}/cmd"),
            "#".into(),
            "+/+/+/+/cmd".into(),
        ] {
            assert!(!allowed(&me, Action::Subscribe, &f), "{f}");
        }
    }

    #[test]
    fn actions_parse_like_emqx_sends_them() {
        assert_eq!(Action::parse("publish"), Some(Action::Publish));
        assert_eq!(Action::parse("subscribe"), Some(Action::Subscribe));
        assert_eq!(Action::parse("all"), None);
        assert_eq!(Action::parse("PUBLISH"), None);
    }
}
