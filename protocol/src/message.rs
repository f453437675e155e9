//! Typed payloads of signed messages (PROTOCOL.md §2–§3) and the checks a receiver makes
//! after the signature: the signer may speak for the gateway named in the payload, that
//! gateway is the one the topic (or authenticated HTTP caller) names, and a command has
//! not expired.
//!
//! The envelope `{"v","id","gw","ts","type","exp_ms","body"}` is [`Envelope`]; `type` and
//! `body` together are one [`Message`] variant, so a heartbeat body can never be read as a
//! command. Unknown extra fields in bodies are ignored (old receivers keep working when a
//! sender adds telemetry); unknown message types, commands, events and result codes are
//! errors.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::jws::{self, JwsError, Kid};

/// Envelope version.
pub const MESSAGE_VERSION: u8 = 1;

/// A signed message's payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Unique per message (UUID v7); receivers drop duplicates by it.
    pub id: Uuid,
    /// The gateway the message is from or for.
    pub gw: Uuid,
    /// Unix milliseconds at the sender.
    pub ts: u64,
    /// Commands only: Unix milliseconds after which the command must not be executed.
    pub exp_ms: Option<u64>,
    pub message: Message,
}

/// The type and body of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Heartbeat(Heartbeat),
    State(GatewayState),
    Event(Event),
    Cmd(Command),
    Ack(Ack),
}

/// The `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Heartbeat,
    State,
    Event,
    Cmd,
    Ack,
}

impl MessageType {
    /// The `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Heartbeat => "heartbeat",
            MessageType::State => "state",
            MessageType::Event => "event",
            MessageType::Cmd => "cmd",
            MessageType::Ack => "ack",
        }
    }

    /// Whether a gateway signs this type (everything but `cmd`).
    pub fn from_gateway(self) -> bool {
        !matches!(self, MessageType::Cmd)
    }
}

impl Message {
    /// The `type` of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Heartbeat(_) => MessageType::Heartbeat,
            Message::State(_) => MessageType::State,
            Message::Event(_) => MessageType::Event,
            Message::Cmd(_) => MessageType::Cmd,
            Message::Ack(_) => MessageType::Ack,
        }
    }
}

/// `dmr/v1/gw/{gw}/heartbeat`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub uptime_s: u64,
    /// Events waiting in the gateway's outbox.
    pub outbox_pending: u64,
    /// Age of the oldest waiting event in seconds (absent when the outbox is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_oldest_age_s: Option<u64>,
    pub locks: Vec<LockStatus>,
}

/// One lock in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStatus {
    pub lock_id: Uuid,
    /// Modbus unit address on its bus.
    pub addr: u8,
    /// Whether the lock answered its last polls.
    pub online: bool,
    pub door_closed: bool,
    pub locked: bool,
    /// Running firmware, `major.minor.patch`.
    pub fw: String,
}

/// `dmr/v1/gw/{gw}/state` (retained; the Last Will says `online: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayState {
    pub online: bool,
}

/// `dmr/v1/gw/{gw}/event`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Unlock(UnlockEvent),
    Door(DoorEvent),
    Alarm(AlarmEvent),
    Fw(FwEvent),
}

impl Event {
    /// The lock the event is about.
    pub fn lock_id(&self) -> Uuid {
        match self {
            Event::Unlock(e) => e.lock_id,
            Event::Door(e) => e.lock_id,
            Event::Alarm(e) => e.lock_id,
            Event::Fw(e) => e.lock_id,
        }
    }
}

/// An unlock attempt or its outcome. A token that passes verification produces two
/// events: `accepted` (written with the recorded use, before the lock moves) and then the
/// outcome `ok`, `lock_unreachable` or `lock_fault`. A refused token produces one event
/// with its reason code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockEvent {
    pub lock_id: Uuid,
    /// Absent when the presented text was not a token at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    pub result: ResultCode,
    /// How the token arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Presenter>,
    /// Unix milliseconds at the gateway (trusted time).
    pub at: u64,
}

/// How a token reached the gateway's verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presenter {
    /// `cmd unlock` from the cloud.
    Cloud,
    /// The local HTTP endpoint on the venue LAN.
    Lan,
    /// The serial QR scanner or keypad.
    Scanner,
}

/// Door sensor change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorEvent {
    pub lock_id: Uuid,
    pub door: DoorChange,
    pub at: u64,
}

/// `opened` or `closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorChange {
    Opened,
    Closed,
}

/// An alarm raised (or, for `lock_online`, cleared) at a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub lock_id: Uuid,
    pub alarm: AlarmKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: u64,
}

/// Alarm kinds of §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    ForcedOpen,
    Tamper,
    Jam,
    LowVoltage,
    LockOffline,
    LockOnline,
}

impl AlarmKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::ForcedOpen => "forced_open",
            AlarmKind::Tamper => "tamper",
            AlarmKind::Jam => "jam",
            AlarmKind::LowVoltage => "low_voltage",
            AlarmKind::LockOffline => "lock_offline",
            AlarmKind::LockOnline => "lock_online",
        }
    }
}

/// Firmware flashing progress or result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwEvent {
    pub lock_id: Uuid,
    pub stage: FwStage,
    /// Bytes the controller has received.
    pub received: u32,
    pub total: u32,
    /// Target version, `major.minor.patch`.
    pub version: String,
    /// On failure, what went wrong in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: u64,
}

/// Where a flash is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FwStage {
    Progress,
    Done,
    Failed,
}

/// `dmr/v1/gw/{gw}/cmd`: signed by a cloud key, carries `exp_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Command {
    #[serde(rename = "unlock")]
    Unlock { token: String },
    /// Cache tokens for later redemption by text or short code.
    #[serde(rename = "tokens.put")]
    TokensPut { tokens: Vec<String> },
    /// Add token ids to the revocation list. `version` orders lists: a gateway ignores one
    /// older than what it holds.
    #[serde(rename = "tokens.revoke")]
    TokensRevoke {
        token_ids: Vec<Uuid>,
        #[serde(default)]
        version: u64,
    },
    #[serde(rename = "config.set")]
    ConfigSet(ConfigSet),
    /// Ask the gateway to run an HTTP sync now.
    #[serde(rename = "sync")]
    Sync {},
}

impl Command {
    /// The `op` string.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Unlock { .. } => "unlock",
            Command::TokensPut { .. } => "tokens.put",
            Command::TokensRevoke { .. } => "tokens.revoke",
            Command::ConfigSet(_) => "config.set",
            Command::Sync {} => "sync",
        }
    }
}

/// Runtime settings the cloud may change. Re-applying the same `version` changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSet {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_skew_s: Option<u32>,
}

/// `dmr/v1/gw/{gw}/ack`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The `id` of the command answered.
    pub cmd: Uuid,
    pub result: ResultCode,
    pub latency_ms: u64,
}

/// Result and reason codes carried in acks and unlock events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultCode {
    /// The command was applied, or the lock opened.
    Ok,
    /// The token passed every check and its use is recorded; the lock is being driven.
    Accepted,
    BadFormat,
    UnknownKey,
    BadSignature,
    WrongLock,
    NotYetValid,
    Expired,
    Revoked,
    UsedUp,
    LockUnreachable,
    LockFault,
    /// Too many attempts from this presenter; try later.
    RateLimited,
    /// The gateway cannot record the use durably (disk full, database error), so it
    /// refuses to open.
    StorageError,
    /// A versioned command older than what the gateway holds; nothing changed.
    Stale,
    /// A command the gateway could not apply (for example a malformed body).
    BadCommand,
}

impl ResultCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::Accepted => "accepted",
            ResultCode::BadFormat => "bad_format",
            ResultCode::UnknownKey => "unknown_key",
            ResultCode::BadSignature => "bad_signature",
            ResultCode::WrongLock => "wrong_lock",
            ResultCode::NotYetValid => "not_yet_valid",
            ResultCode::Expired => "expired",
            ResultCode::Revoked => "revoked",
            ResultCode::UsedUp => "used_up",
            ResultCode::LockUnreachable => "lock_unreachable",
            ResultCode::LockFault => "lock_fault",
            ResultCode::RateLimited => "rate_limited",
            ResultCode::StorageError => "storage_error",
            ResultCode::Stale => "stale",
            ResultCode::BadCommand => "bad_command",
        }
    }
}

impl From<&crate::token::Reject> for ResultCode {
    fn from(r: &crate::token::Reject) -> Self {
        use crate::token::Reject as R;
        match r {
            R::BadFormat(_) => ResultCode::BadFormat,
            R::UnknownKey { .. } => ResultCode::UnknownKey,
            R::BadSignature => ResultCode::BadSignature,
            R::WrongLock { .. } => ResultCode::WrongLock,
            R::NotYetValid { .. } => ResultCode::NotYetValid,
            R::Expired { .. } => ResultCode::Expired,
            R::Revoked => ResultCode::Revoked,
            R::UsedUp { .. } => ResultCode::UsedUp,
        }
    }
}

/// Why a signed message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Jws(#[from] JwsError),
    #[error("message payload is not valid JSON for its type: {reason}")]
    Payload { reason: String },
    #[error("message version must be {MESSAGE_VERSION}, found {found}")]
    Version { found: u64 },
    #[error("{kind} message must be signed by {expected}, but kid is {found}")]
    WrongSigner {
        kind: &'static str,
        expected: &'static str,
        found: Kid,
    },
    #[error("message is for gateway {found}, but it arrived for gateway {expected}")]
    WrongGateway { expected: Uuid, found: Uuid },
    #[error("command has no exp_ms")]
    MissingExpiry,
    #[error("command expired at {exp_ms}, it is now {now_ms}")]
    Expired { exp_ms: u64, now_ms: u64 },
}

#[derive(Serialize)]
struct WireOut<'a, B: Serialize> {
    v: u8,
    id: Uuid,
    gw: Uuid,
    ts: u64,
    #[serde(rename = "type")]
    kind: MessageType,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp_ms: Option<u64>,
    body: &'a B,
}

#[derive(Deserialize)]
struct WireIn<'a> {
    v: u64,
    id: Uuid,
    gw: Uuid,
    ts: u64,
    #[serde(rename = "type")]
    kind: MessageType,
    #[serde(default)]
    exp_ms: Option<u64>,
    #[serde(borrow)]
    body: &'a RawValue,
}

impl Envelope {
    /// A message with no expiry.
    pub fn new(id: Uuid, gw: Uuid, ts: u64, message: Message) -> Self {
        Envelope {
            id,
            gw,
            ts,
            exp_ms: None,
            message,
        }
    }

    /// The payload JSON.
    pub fn to_json(&self) -> Vec<u8> {
        fn out<B: Serialize>(e: &Envelope, kind: MessageType, body: &B) -> Vec<u8> {
            let wire = WireOut {
                v: MESSAGE_VERSION,
                id: e.id,
                gw: e.gw,
                ts: e.ts,
                kind,
                exp_ms: e.exp_ms,
                body,
            };
            // Serializing plain structs, enums and strings into a Vec cannot fail.
            serde_json::to_vec(&wire).unwrap_or_default()
        }
        let kind = self.message.message_type();
        match &self.message {
            Message::Heartbeat(b) => out(self, kind, b),
            Message::State(b) => out(self, kind, b),
            Message::Event(b) => out(self, kind, b),
            Message::Cmd(b) => out(self, kind, b),
            Message::Ack(b) => out(self, kind, b),
        }
    }

    /// Parses payload JSON (after its signature has been verified).
    pub fn from_json(payload: &[u8]) -> Result<Self, MessageError> {
        let perr = |e: serde_json::Error| MessageError::Payload {
            reason: e.to_string(),
        };
        let wire: WireIn<'_> = serde_json::from_slice(payload).map_err(perr)?;
        if wire.v != u64::from(MESSAGE_VERSION) {
            return Err(MessageError::Version { found: wire.v });
        }
        let body = wire.body.get();
        let message = match wire.kind {
            MessageType::Heartbeat => Message::Heartbeat(serde_json::from_str(body).map_err(perr)?),
            MessageType::State => Message::State(serde_json::from_str(body).map_err(perr)?),
            MessageType::Event => Message::Event(serde_json::from_str(body).map_err(perr)?),
            MessageType::Cmd => Message::Cmd(serde_json::from_str(body).map_err(perr)?),
            MessageType::Ack => Message::Ack(serde_json::from_str(body).map_err(perr)?),
        };
        Ok(Envelope {
            id: wire.id,
            gw: wire.gw,
            ts: wire.ts,
            exp_ms: wire.exp_ms,
            message,
        })
    }

    /// Signs the message as a compact JWS.
    pub fn sign(&self, kid: Kid, key: &SigningKey) -> String {
        jws::sign(&self.to_json(), kid, key)
    }
}

/// What a receiver expects of a message beyond its signature.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The gateway named by the topic, or the authenticated HTTP caller.
    pub gw: Uuid,
    /// The receiver's clock, Unix milliseconds, for command expiry.
    pub now_ms: u64,
}

/// Verifies a compact JWS and checks it as PROTOCOL.md §2 requires: a gateway message is
/// signed by that gateway's own key, a command by a cloud key; `gw` is the expected gateway;
/// a command is not past its `exp_ms`. `resolve` maps a kid to a trusted key; duplicate
/// detection by `id` is the caller's (it needs state).
pub fn open<'k>(
    compact: &str,
    resolve: impl FnOnce(&Kid) -> Option<&'k VerifyingKey>,
    expect: Expect,
) -> Result<(Kid, Envelope), MessageError> {
    let (kid, payload) = jws::verify(compact, resolve)?;
    check(kid, &payload, expect)
}

/// [`open`] for many messages at once, with the signatures checked by Ed25519 batch
/// verification ([`jws::verify_many`]): the same answer for every item as `open` would
/// give, in input order, at a fraction of the CPU for large batches. `resolve(i, kid)` is
/// the key the `i`-th message's `kid` names, if trusted.
pub fn open_many<'k>(
    items: &[(&str, Expect)],
    resolve: impl Fn(usize, &Kid) -> Option<&'k VerifyingKey>,
) -> Vec<Result<(Kid, Envelope), MessageError>> {
    let mut out: Vec<Option<Result<(Kid, Envelope), MessageError>>> =
        (0..items.len()).map(|_| None).collect();
    let mut parsed = Vec::with_capacity(items.len());
    for (i, (compact, _)) in items.iter().enumerate() {
        match jws::parse(compact) {
            Err(e) => out[i] = Some(Err(e.into())),
            Ok(u) => match resolve(i, &u.kid()) {
                None => out[i] = Some(Err(JwsError::UnknownKid { kid: u.kid() }.into())),
                Some(key) => parsed.push((i, u, key)),
            },
        }
    }
    let pairs: Vec<(&jws::Unverified<'_>, &VerifyingKey)> =
        parsed.iter().map(|(_, u, k)| (u, *k)).collect();
    let payloads = jws::verify_many(&pairs);
    for ((i, u, _), payload) in parsed.iter().zip(payloads) {
        out[*i] = Some(match payload {
            Ok(p) => check(u.kid(), &p, items[*i].1),
            Err(e) => Err(e.into()),
        });
    }
    // Every index was answered above: by the parse, the key lookup or the verification.
    out.into_iter()
        .map(|o| o.unwrap_or(Err(JwsError::Segments { found: 0 }.into())))
        .collect()
}

/// What [`open`] checks once the signature is good.
fn check(kid: Kid, payload: &[u8], expect: Expect) -> Result<(Kid, Envelope), MessageError> {
    let env = Envelope::from_json(payload)?;
    let kind = env.message.message_type();
    match (kind.from_gateway(), kid) {
        (true, Kid::Gateway(signer)) if signer == env.gw => {}
        (true, found) => {
            return Err(MessageError::WrongSigner {
                kind: kind.as_str(),
                expected: "the gateway's own key gw:<gw>",
                found,
            });
        }
        (false, Kid::Cloud(_)) => {}
        (false, found) => {
            return Err(MessageError::WrongSigner {
                kind: kind.as_str(),
                expected: "a cloud key",
                found,
            });
        }
    }
    if env.gw != expect.gw {
        return Err(MessageError::WrongGateway {
            expected: expect.gw,
            found: env.gw,
        });
    }
    if kind == MessageType::Cmd {
        let exp_ms = env.exp_ms.ok_or(MessageError::MissingExpiry)?;
        if expect.now_ms > exp_ms {
            return Err(MessageError::Expired {
                exp_ms,
                now_ms: expect.now_ms,
            });
        }
    }
    Ok((kid, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Uuid {
        Uuid::from_u128(0xcc)
    }

    #[test]
    fn command_round_trip_and_checks() {
        let cloud = SigningKey::from_bytes(&[3u8; 32]);
        let vk = cloud.verifying_key();
        let mut env = Envelope::new(
            Uuid::from_u128(1),
            gw(),
            1_000,
            Message::Cmd(Command::TokensRevoke {
                token_ids: vec![Uuid::from_u128(5)],
                version: 3,
            }),
        );
        let unsigned_exp = env.sign(Kid::Cloud(1), &cloud);
        let exp = |now_ms| Expect { gw: gw(), now_ms };
        assert!(matches!(
            open(&unsigned_exp, |_| Some(&vk), exp(0)),
            Err(MessageError::MissingExpiry)
        ));
        env.exp_ms = Some(2_000);
        let jws = env.sign(Kid::Cloud(1), &cloud);
        let (_, back) = open(&jws, |_| Some(&vk), exp(2_000)).unwrap();
        assert_eq!(back, env);
        assert!(matches!(
            open(&jws, |_| Some(&vk), exp(2_001)),
            Err(MessageError::Expired { .. })
        ));
        assert!(matches!(
            open(
                &jws,
                |_| Some(&vk),
                Expect {
                    gw: Uuid::from_u128(0xdd),
                    now_ms: 0
                }
            ),
            Err(MessageError::WrongGateway { .. })
        ));
        // A command signed by a gateway key is refused even if the key verifies.
        let gw_jws = env.sign(Kid::Gateway(gw()), &cloud);
        assert!(matches!(
            open(&gw_jws, |_| Some(&vk), exp(0)),
            Err(MessageError::WrongSigner { .. })
        ));
    }

    /// `open_many` answers exactly what `open` answers, item by item, whatever the mix and
    /// wherever the bad ones sit in a batch (batch verification bisects to find them).
    #[test]
    fn open_many_answers_like_open_for_every_item() {
        let keys: Vec<SigningKey> = (0..6u8)
            .map(|i| SigningKey::from_bytes(&[i + 10; 32]))
            .collect();
        let vks: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let gws: Vec<Uuid> = (0..6u128).map(|i| Uuid::from_u128(0x100 + i)).collect();
        let mut texts = Vec::new();
        let mut expects = Vec::new();
        for n in 0..200u128 {
            let g = (n % 6) as usize;
            let env = Envelope::new(
                Uuid::from_u128(n + 1),
                gws[g],
                n as u64,
                Message::State(GatewayState { online: n % 2 == 0 }),
            );
            let mut text = env.sign(Kid::Gateway(gws[g]), &keys[g]);
            let mut expect_gw = gws[g];
            match n {
                // A flipped signature character: bad signature.
                7 | 150 => {
                    let last = text.pop().unwrap();
                    text.push(if last == 'A' { 'B' } else { 'A' });
                }
                // Signed by another gateway's key under this gateway's kid.
                33 => text = env.sign(Kid::Gateway(gws[g]), &keys[(g + 1) % 6]),
                // Another gateway's kid.
                60 => text = env.sign(Kid::Gateway(gws[(g + 1) % 6]), &keys[(g + 1) % 6]),
                // Arrived for another gateway.
                90 => expect_gw = gws[(g + 2) % 6],
                // Not a JWS at all.
                120 => text = "garbage".to_string(),
                _ => {}
            }
            texts.push(text);
            expects.push(Expect {
                gw: expect_gw,
                now_ms: 0,
            });
        }
        let resolve = |expect: &Expect, kid: &Kid| {
            let g = gws.iter().position(|g| *g == expect.gw)?;
            (*kid == Kid::Gateway(expect.gw)).then_some(&vks[g])
        };
        for len in [1usize, 3, 5, 64, 200] {
            let items: Vec<(&str, Expect)> = texts[..len]
                .iter()
                .zip(&expects)
                .map(|(t, e)| (t.as_str(), *e))
                .collect();
            let many = open_many(&items, |i, kid| resolve(&items[i].1, kid));
            assert_eq!(many.len(), len);
            let mut bad = 0;
            for (i, got) in many.iter().enumerate() {
                let one = open(items[i].0, |kid| resolve(&items[i].1, kid), items[i].1);
                assert_eq!(
                    format!("{got:?}"),
                    format!("{one:?}"),
                    "item {i} of a batch of {len}"
                );
                bad += usize::from(got.is_err());
            }
            let expected_bad = [7usize, 33, 60, 90, 120, 150]
                .iter()
                .filter(|&&n| n < len)
                .count();
            assert_eq!(bad, expected_bad, "batch of {len}");
        }
    }

    #[test]
    fn gateway_message_must_be_signed_by_that_gateway() {
        let key = SigningKey::from_bytes(&[4u8; 32]);
        let vk = key.verifying_key();
        let env = Envelope::new(
            Uuid::from_u128(2),
            gw(),
            5,
            Message::State(GatewayState { online: true }),
        );
        let ok = env.sign(Kid::Gateway(gw()), &key);
        assert!(
            open(
                &ok,
                |_| Some(&vk),
                Expect {
                    gw: gw(),
                    now_ms: 0
                }
            )
            .is_ok()
        );
        let other = env.sign(Kid::Gateway(Uuid::from_u128(0xee)), &key);
        assert!(matches!(
            open(
                &other,
                |_| Some(&vk),
                Expect {
                    gw: gw(),
                    now_ms: 0
                }
            ),
            Err(MessageError::WrongSigner { .. })
        ));
        let cloud = env.sign(Kid::Cloud(1), &key);
        assert!(matches!(
            open(
                &cloud,
                |_| Some(&vk),
                Expect {
                    gw: gw(),
                    now_ms: 0
                }
            ),
            Err(MessageError::WrongSigner { .. })
        ));
    }

    #[test]
    fn bodies_use_the_contract_spelling() {
        let env = Envelope::new(
            Uuid::from_u128(9),
            gw(),
            7,
            Message::Event(Event::Unlock(UnlockEvent {
                lock_id: Uuid::from_u128(1),
                token_id: Some(Uuid::from_u128(2)),
                order_id: None,
                result: ResultCode::LockUnreachable,
                via: Some(Presenter::Scanner),
                at: 7,
            })),
        );
        let v: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["body"]["kind"], "unlock");
        assert_eq!(v["body"]["result"], "lock_unreachable");
        assert!(v.get("exp_ms").is_none());
        let cmd = serde_json::to_value(Command::TokensPut { tokens: vec![] }).unwrap();
        assert_eq!(cmd["op"], "tokens.put");
        let sync: Command = serde_json::from_str(r#"{"op":"sync"}"#).unwrap();
        assert_eq!(sync, Command::Sync {});
        assert!(serde_json::from_str::<Command>(r#"{"op":"format"}"#).is_err());
        for code in [ResultCode::Ok, ResultCode::UsedUp, ResultCode::StorageError] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
        }
    }

    #[test]
    fn wrong_body_for_type_is_refused() {
        let bad = br#"{"v":1,"id":"0193a5e0-0000-7000-8000-0000000000d1","gw":"0193a5e0-0000-7000-8000-0000000000cc","ts":1,"type":"ack","body":{"online":true}}"#;
        assert!(matches!(
            Envelope::from_json(bad),
            Err(MessageError::Payload { .. })
        ));
        let v2 = br#"{"v":2,"id":"0193a5e0-0000-7000-8000-0000000000d1","gw":"0193a5e0-0000-7000-8000-0000000000cc","ts":1,"type":"state","body":{"online":true}}"#;
        assert!(matches!(
            Envelope::from_json(v2),
            Err(MessageError::Version { found: 2 })
        ));
    }
}
