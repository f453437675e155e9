-- The gateway link: cloud signing keys, enrollment results, gateway and lock live state,
-- replay protection for gateway-signed HTTP requests, the message dedupe table, applied
-- events, alarms, the tokens and revocations a gateway pulls, and the change feed that the
-- console's live stream reads. Portable SQL as in 0001; flags are BIGINT 0/1.

-- Ed25519 signing keys. The private seed is stored only encrypted (AES-256-GCM under the
-- master key from DMR_MASTER_KEY, AAD "dmr-cloud-key/<key_id>"), as base64url of
-- nonce (12 bytes) || ciphertext+tag. One key is active (signs); retiring keys stay trusted
-- until retire_after; retired keys are kept for the record.
CREATE TABLE cloud_keys (
    key_id           BIGINT PRIMARY KEY CHECK (key_id >= 1 AND key_id <= 4294967295),
    public_key       TEXT NOT NULL,
    private_key_enc  TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    created_at       BIGINT NOT NULL,
    activated_at     BIGINT,
    retire_after     BIGINT
);

-- MQTT password: lower-case hex SHA-256 of the random password handed out once at enrollment.
ALTER TABLE gateways ADD COLUMN mqtt_password_hash TEXT;
ALTER TABLE gateways ADD COLUMN online BIGINT NOT NULL DEFAULT 0;
-- Newest `state` message applied (ms at the gateway), and the newest `online:false` one:
-- see link::ingest for why the two are kept apart (the Last Will is signed at connect).
ALTER TABLE gateways ADD COLUMN state_ts BIGINT;
ALTER TABLE gateways ADD COLUMN offline_ts BIGINT;
ALTER TABLE gateways ADD COLUMN heartbeat_ts BIGINT;
ALTER TABLE gateways ADD COLUMN outbox_pending BIGINT;
ALTER TABLE gateways ADD COLUMN outbox_oldest_age_s BIGINT;
ALTER TABLE gateways ADD COLUMN agent_version TEXT;
ALTER TABLE gateways ADD COLUMN config_version BIGINT NOT NULL DEFAULT 0;

ALTER TABLE locks ADD COLUMN door_closed BIGINT;
ALTER TABLE locks ADD COLUMN door_at BIGINT;
ALTER TABLE locks ADD COLUMN locked BIGINT;
ALTER TABLE locks ADD COLUMN fw_version TEXT;
ALTER TABLE locks ADD COLUMN last_heartbeat_at BIGINT;
ALTER TABLE locks ADD COLUMN status_changed_at BIGINT;

-- A code may name the gateway it (re-)enrolls; otherwise enrollment creates one.
ALTER TABLE enrollment_codes ADD COLUMN gateway_id TEXT REFERENCES gateways (id);

-- Nonces of gateway-signed HTTP requests inside the replay window (pruned after 10 min).
CREATE TABLE gateway_nonces (
    gateway_id  TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, nonce)
);
CREATE INDEX gateway_nonces_seen ON gateway_nonces (seen_at);

-- Every gateway message applied, by its id: the same message by MQTT and by HTTP (or twice
-- by either) is applied once.
CREATE TABLE gateway_messages (
    id           TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL,
    type         TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    via          TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);
CREATE INDEX gateway_messages_received ON gateway_messages (received_at);

CREATE TABLE gateway_events (
    id           TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    lock_id      TEXT,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    via          TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);
CREATE INDEX gateway_events_merchant ON gateway_events (merchant_id, ts, id);
CREATE INDEX gateway_events_lock ON gateway_events (lock_id, ts);

CREATE TABLE alarms (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    lock_id      TEXT,
    kind         TEXT NOT NULL,
    detail       TEXT,
    raised_at    BIGINT NOT NULL,
    cleared_at   BIGINT,
    acked_at     BIGINT,
    acked_by     TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX alarms_merchant_created ON alarms (merchant_id, created_at, id);
CREATE INDEX alarms_lock_open ON alarms (lock_id, kind, cleared_at);

-- Tokens queued for a gateway to cache (sync `tokens.put`), read by a (created_at, id) cursor.
CREATE TABLE gateway_tokens (
    id           TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    token_id     TEXT NOT NULL,
    token        TEXT NOT NULL,
    not_after    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX gateway_tokens_cursor ON gateway_tokens (gateway_id, created_at, id);

-- Revoked tokens per gateway; the list's version is the newest `version` among its rows.
CREATE TABLE token_revocations (
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    token_id     TEXT NOT NULL,
    not_after    BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, token_id)
);

-- The tenant-scoped change feed behind GET /api/v1/live: every visible lock, gateway,
-- alarm or order change appends a row; readers poll by (created_at, id).
CREATE TABLE live_changes (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('lock', 'gateway', 'alarm', 'order')),
    entity_id    TEXT NOT NULL,
    data         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX live_changes_created ON live_changes (created_at, id);
CREATE INDEX live_changes_merchant ON live_changes (merchant_id, created_at, id);
