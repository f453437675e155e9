//! MQTT topics (PROTOCOL.md §3): builders, subscription filters and a parser.
//!
//! Every topic is `dmr/v1/gw/{gateway uuid}/{kind}`. The parser accepts only that exact
//! shape with a canonical lowercase UUID, so one gateway has exactly one topic prefix and
//! ACLs written against it cannot be sidestepped by another spelling.

use uuid::Uuid;

/// Prefix of every topic.
pub const PREFIX: &str = "dmr/v1/gw/";
/// Shared-subscription group the cloud instances join.
pub const SHARE_GROUP: &str = "dmr-cloud";

/// The last level of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    State,
    Heartbeat,
    Event,
    Cmd,
    Ack,
}

impl TopicKind {
    /// Every kind, in table order.
    pub const ALL: [TopicKind; 5] = [
        TopicKind::State,
        TopicKind::Heartbeat,
        TopicKind::Event,
        TopicKind::Cmd,
        TopicKind::Ack,
    ];

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::State => "state",
            TopicKind::Heartbeat => "heartbeat",
            TopicKind::Event => "event",
            TopicKind::Cmd => "cmd",
            TopicKind::Ack => "ack",
        }
    }

    /// QoS of §3: heartbeats are telemetry (0), everything else is at least once (1).
    pub fn qos(self) -> u8 {
        match self {
            TopicKind::Heartbeat => 0,
            _ => 1,
        }
    }

    /// Only the gateway state is retained.
    pub fn retained(self) -> bool {
        self == TopicKind::State
    }

    /// Whether the gateway publishes on it (everything but `cmd`).
    pub fn from_gateway(self) -> bool {
        self != TopicKind::Cmd
    }

    fn parse(level: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

/// Why a topic is not one of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic \"{topic}\" does not start with \"{PREFIX}\"")]
    Prefix { topic: String },
    #[error("topic \"{topic}\" must be {PREFIX}<gateway uuid>/<kind>")]
    Shape { topic: String },
    #[error("topic \"{topic}\" does not name a gateway by its lowercase hyphenated uuid")]
    Gateway { topic: String },
    #[error(
        "topic \"{topic}\" ends in an unknown kind; expected state, heartbeat, event, cmd or ack"
    )]
    Kind { topic: String },
}

/// The topic for one gateway and kind.
pub fn topic(gw: Uuid, kind: TopicKind) -> String {
    format!("{PREFIX}{}/{}", gw.hyphenated(), kind.as_str())
}

/// Everything a gateway may publish under (its ACL pattern).
pub fn gateway_prefix(gw: Uuid) -> String {
    format!("{PREFIX}{}/", gw.hyphenated())
}

/// A filter over every gateway for one kind: `dmr/v1/gw/+/{kind}`.
pub fn all_gateways(kind: TopicKind) -> String {
    format!("{PREFIX}+/{}", kind.as_str())
}

/// The shared-subscription filter cloud instances use so that each message reaches one of
/// them: `$share/dmr-cloud/dmr/v1/gw/+/{kind}`.
pub fn shared(kind: TopicKind) -> String {
    format!("$share/{SHARE_GROUP}/{}", all_gateways(kind))
}

/// Parses a topic into its gateway and kind.
pub fn parse(topic: &str) -> Result<(Uuid, TopicKind), TopicError> {
    let owned = || topic.chars().take(200).collect::<String>();
    let rest = topic
        .strip_prefix(PREFIX)
        .ok_or_else(|| TopicError::Prefix { topic: owned() })?;
    let (gw, kind) = rest
        .split_once('/')
        .ok_or_else(|| TopicError::Shape { topic: owned() })?;
    if kind.contains('/') {
        return Err(TopicError::Shape { topic: owned() });
    }
    let id = Uuid::try_parse(gw).map_err(|_| TopicError::Gateway { topic: owned() })?;
    if id.hyphenated().to_string() != gw {
        return Err(TopicError::Gateway { topic: owned() });
    }
    let kind = TopicKind::parse(kind).ok_or_else(|| TopicError::Kind { topic: owned() })?;
    Ok((id, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse() {
        let gw = Uuid::from_u128(0x0193a5e0_0000_7000_8000_0000000000cc);
        for kind in TopicKind::ALL {
            let t = topic(gw, kind);
            assert!(t.starts_with(&gateway_prefix(gw)));
            assert_eq!(parse(&t), Ok((gw, kind)));
        }
        assert_eq!(
            topic(gw, TopicKind::Cmd),
            "dmr/v1/gw/0193a5e0-0000-7000-8000-0000000000cc/cmd"
        );
        assert_eq!(
            shared(TopicKind::Event),
            "$share/dmr-cloud/dmr/v1/gw/+/event"
        );
        assert_eq!(TopicKind::Heartbeat.qos(), 0);
        assert!(TopicKind::State.retained());
        assert!(!TopicKind::Cmd.from_gateway());
    }

    #[test]
    fn refuses_other_shapes() {
        let gw = "0193a5e0-0000-7000-8000-0000000000cc";
        assert!(matches!(parse("x/y"), Err(TopicError::Prefix { .. })));
        assert!(matches!(
            parse(&format!("dmr/v1/gw/{gw}")),
            Err(TopicError::Shape { .. })
        ));
        assert!(matches!(
            parse(&format!("dmr/v1/gw/{gw}/event/x")),
            Err(TopicError::Shape { .. })
        ));
        assert!(matches!(
            parse(&format!("dmr/v1/gw/{}/event", gw.to_uppercase())),
            Err(TopicError::Gateway { .. })
        ));
        assert!(matches!(
            parse(&format!("dmr/v1/gw/{}/event", gw.replace('-', ""))),
            Err(TopicError::Gateway { .. })
        ));
        assert!(matches!(
            parse(&format!("dmr/v1/gw/{gw}/evil")),
            Err(TopicError::Kind { .. })
        ));
    }
}
