-- Commands the cloud sends to gateways over MQTT (dmr/v1/gw/{gw}/cmd) and the acks that
-- answer them. A command is 'sent' until its first ack ('acked', with the gateway's result
-- code) or until exp_ms passes unanswered ('expired', set by a leased job). body is the
-- command JSON with bearer secrets (unlock tokens) replaced by their ids.
CREATE TABLE gateway_commands (
    id           TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    lock_id      TEXT,
    op           TEXT NOT NULL,
    body         TEXT NOT NULL,
    key_id       BIGINT NOT NULL,
    exp_ms       BIGINT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'acked', 'expired')),
    result       TEXT,
    latency_ms   BIGINT,
    created_by   TEXT,
    created_at   BIGINT NOT NULL,
    acked_at     BIGINT
);
CREATE INDEX gateway_commands_gateway_created ON gateway_commands (gateway_id, created_at, id);
CREATE INDEX gateway_commands_open ON gateway_commands (status, exp_ms);

-- Every ack received, including repeats and acks naming no command of that gateway (kept
-- for diagnosis; only the first matching ack settles a command).
CREATE TABLE gateway_command_acks (
    id           TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL,
    command_id   TEXT NOT NULL,
    result       TEXT NOT NULL,
    latency_ms   BIGINT NOT NULL,
    matched      BIGINT NOT NULL,
    ts           BIGINT NOT NULL,
    received_at  BIGINT NOT NULL
);
CREATE INDEX gateway_command_acks_command ON gateway_command_acks (command_id);
