-- Orders, payments, refunds and the money that follows them.
-- Portable SQL (SQLite and PostgreSQL): text UUIDs, BIGINT fen, BIGINT Unix ms.
-- Status changes are conditional updates (`WHERE id = $1 AND status = $2`) plus a row in
-- order_transitions, in one transaction: whoever updates one row wins, the other sees 0 rows.

CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,
    merchant_id         TEXT NOT NULL REFERENCES merchants (id),
    venue_id            TEXT NOT NULL REFERENCES venues (id),
    lock_id             TEXT NOT NULL REFERENCES locks (id),
    gateway_id          TEXT NOT NULL,
    plan_id             TEXT NOT NULL REFERENCES price_plans (id),
    -- Snapshot of the plan at purchase: later plan edits do not change a sold order.
    plan_name           TEXT NOT NULL,
    duration_minutes    BIGINT NOT NULL CHECK (duration_minutes > 0),
    amount_fen          BIGINT NOT NULL CHECK (amount_fen > 0),
    refunded_fen        BIGINT NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0),
    status              TEXT NOT NULL CHECK (status IN ('created', 'paid', 'unlocking', 'unlocked',
                            'completed', 'expired', 'unlock_failed', 'refunding', 'refunded', 'cancelled')),
    -- Set to lock_id while the order occupies its lock (created .. unlocked), NULL after.
    -- A unique index over it is "one active order per lock"; NULLs never collide on
    -- either engine, so no partial index or engine-specific syntax is needed.
    active_lock_id      TEXT,
    device_session      TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    access_key_hash     TEXT NOT NULL,
    provider            TEXT NOT NULL,
    pay_deadline_at     BIGINT NOT NULL,
    unlock_deadline_at  BIGINT,
    token_id            TEXT,
    token_text          TEXT,
    token_not_after     BIGINT,
    unlock_command_id   TEXT,
    door_opened_at      BIGINT,
    -- Why a person should look at this order (e.g. refunded but the door opened later).
    review_reason       TEXT,
    created_at          BIGINT NOT NULL,
    paid_at             BIGINT,
    unlocking_at        BIGINT,
    unlocked_at         BIGINT,
    completed_at        BIGINT,
    ended_at            BIGINT,
    updated_at          BIGINT NOT NULL
);
CREATE UNIQUE INDEX orders_active_lock ON orders (active_lock_id);
CREATE UNIQUE INDEX orders_idempotency ON orders (device_session, idempotency_key);
CREATE INDEX orders_merchant_created ON orders (merchant_id, created_at, id);
CREATE INDEX orders_status_deadline ON orders (status, pay_deadline_at);
CREATE INDEX orders_status_unlock_deadline ON orders (status, unlock_deadline_at);
CREATE INDEX orders_session ON orders (device_session, created_at);
CREATE INDEX orders_lock ON orders (lock_id, created_at);
CREATE INDEX orders_token ON orders (token_id);

CREATE TABLE order_transitions (
    id           TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL REFERENCES orders (id),
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    -- user:<id> | system | provider:<name> | gateway:<id> | payer
    actor        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX order_transitions_order ON order_transitions (order_id, at);

CREATE TABLE payments (
    id               TEXT PRIMARY KEY,
    order_id         TEXT NOT NULL REFERENCES orders (id),
    merchant_id      TEXT NOT NULL REFERENCES merchants (id),
    provider         TEXT NOT NULL,
    -- Our number at the provider (WeChat out_trade_no: 6..32 chars, so the uuid without hyphens).
    out_trade_no     TEXT NOT NULL,
    amount_fen       BIGINT NOT NULL CHECK (amount_fen > 0),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'closed')),
    provider_txn_id  TEXT,
    created_at       BIGINT NOT NULL,
    paid_at          BIGINT,
    notified_at      BIGINT,
    last_queried_at  BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX payments_out_trade_no ON payments (out_trade_no);
CREATE UNIQUE INDEX payments_provider_txn ON payments (provider, provider_txn_id);
CREATE INDEX payments_order ON payments (order_id);
CREATE INDEX payments_status ON payments (status, created_at);

-- Every notification a provider delivered, once: the unique key is how ten deliveries of
-- one notification apply once.
CREATE TABLE payment_notifications (
    id               TEXT PRIMARY KEY,
    provider         TEXT NOT NULL,
    notification_id  TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payment_id       TEXT,
    refund_id        TEXT,
    outcome          TEXT NOT NULL,
    received_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX payment_notifications_id ON payment_notifications (provider, notification_id);

CREATE TABLE refunds (
    id                 TEXT PRIMARY KEY,
    order_id           TEXT NOT NULL REFERENCES orders (id),
    payment_id         TEXT NOT NULL REFERENCES payments (id),
    merchant_id        TEXT NOT NULL REFERENCES merchants (id),
    provider           TEXT NOT NULL,
    -- Reused on every retry so the provider refunds once.
    out_refund_no      TEXT NOT NULL,
    amount_fen         BIGINT NOT NULL CHECK (amount_fen > 0),
    reason             TEXT NOT NULL,
    actor              TEXT NOT NULL,
    -- pending: not yet sent (may still be cancelled); processing: sent, waiting for the
    -- provider; succeeded / failed: final; cancelled: never sent.
    status             TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded', 'failed', 'cancelled')),
    send_after         BIGINT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    provider_refund_id TEXT,
    last_error         TEXT,
    created_at         BIGINT NOT NULL,
    sent_at            BIGINT,
    completed_at       BIGINT,
    updated_at         BIGINT NOT NULL
);
CREATE UNIQUE INDEX refunds_out_refund_no ON refunds (out_refund_no);
CREATE INDEX refunds_order ON refunds (order_id);
CREATE INDEX refunds_status ON refunds (status, send_after);

-- Immutable money movements (the code only ever inserts). Signs: payment +, everything
-- that moves the money on (refund, commission, merchant_share) -, so after settlement an
-- order's entries sum to exactly 0. `payout` belongs to a settlement (order_id NULL).
-- (kind, ref_id) is unique so a replayed apply cannot book twice.
CREATE TABLE ledger_entries (
    id             TEXT PRIMARY KEY,
    merchant_id    TEXT NOT NULL REFERENCES merchants (id),
    order_id       TEXT,
    settlement_id  TEXT,
    kind           TEXT NOT NULL CHECK (kind IN ('payment', 'refund', 'commission', 'merchant_share', 'payout')),
    amount_fen     BIGINT NOT NULL,
    ref_id         TEXT NOT NULL,
    -- Asia/Shanghai calendar day of `at`, YYYY-MM-DD.
    day            TEXT NOT NULL,
    at             BIGINT NOT NULL
);
CREATE UNIQUE INDEX ledger_entries_ref ON ledger_entries (kind, ref_id);
CREATE INDEX ledger_entries_order ON ledger_entries (order_id);
CREATE INDEX ledger_entries_merchant_day ON ledger_entries (merchant_id, day);

-- One statement per merchant and Asia/Shanghai day; issued once, never updated.
CREATE TABLE settlements (
    id              TEXT PRIMARY KEY,
    merchant_id     TEXT NOT NULL REFERENCES merchants (id),
    day             TEXT NOT NULL,
    commission_bp   BIGINT NOT NULL,
    orders_count    BIGINT NOT NULL,
    gross_fen       BIGINT NOT NULL,
    refunds_fen     BIGINT NOT NULL,
    commission_fen  BIGINT NOT NULL,
    net_fen         BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('issued')),
    created_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX settlements_merchant_day ON settlements (merchant_id, day);
CREATE INDEX settlements_merchant_created ON settlements (merchant_id, created_at, id);

-- Three-way reconciliation (provider bill × payments × gateway unlock events), one report
-- per merchant, provider and day; items found nowhere else (unknown payments) go to a
-- report with merchant_id NULL that only platform admins see.
CREATE TABLE reconciliation_reports (
    id               TEXT PRIMARY KEY,
    merchant_id      TEXT,
    provider         TEXT NOT NULL,
    day              TEXT NOT NULL,
    items_count      BIGINT NOT NULL,
    summary          TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX reconciliation_reports_merchant_created ON reconciliation_reports (merchant_id, created_at, id);

CREATE TABLE reconciliation_items (
    id            TEXT PRIMARY KEY,
    report_id     TEXT NOT NULL REFERENCES reconciliation_reports (id),
    kind          TEXT NOT NULL CHECK (kind IN ('missing_notification', 'unknown_payment', 'amount_mismatch',
                      'paid_never_opened', 'opened_without_payment')),
    order_id      TEXT,
    out_trade_no  TEXT,
    detail        TEXT NOT NULL
);
CREATE INDEX reconciliation_items_report ON reconciliation_items (report_id);

-- Alerts for a person: refused notifications with a valid signature but wrong amount,
-- merchant or app id; refunds held for review.
CREATE TABLE payment_alerts (
    id          TEXT PRIMARY KEY,
    merchant_id TEXT,
    order_id    TEXT,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Unlock evidence for orders, from gateway unlock events and command acks: what the order
-- detail shows and what reconciliation checks payments against.
CREATE TABLE order_unlock_events (
    id          TEXT PRIMARY KEY,
    order_id    TEXT,
    lock_id     TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('event', 'ack', 'door')),
    result      TEXT NOT NULL,
    via         TEXT,
    token_id    TEXT,
    at          BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX order_unlock_events_order ON order_unlock_events (order_id, at);
CREATE INDEX order_unlock_events_at ON order_unlock_events (at);
