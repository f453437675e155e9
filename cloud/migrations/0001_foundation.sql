-- Foundation schema: accounts, tenants (merchants), venues, gateways, locks, price plans,
-- enrollment codes, refresh tokens, login throttling, job leases, generated secrets.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Ids are text UUIDs, money is
-- BIGINT fen, time is BIGINT Unix milliseconds, soft deletion sets deleted_at.
-- Append-only: never edit a migration that has shipped; add a new numbered file.
-- List queries filter by merchant and order by (created_at, id): the merchant indexes
-- carry both so a page is read in index order, without sorting the tenant's rows.

CREATE TABLE merchants (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    contact_phone  TEXT,
    commission_bp  BIGINT NOT NULL CHECK (commission_bp >= 0 AND commission_bp <= 10000),
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    deleted_at     BIGINT
);
CREATE INDEX merchants_created ON merchants (created_at, id);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    merchant_id    TEXT REFERENCES merchants (id),
    username       TEXT NOT NULL,
    phone          TEXT,
    display_name   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('platform_admin', 'merchant_owner', 'merchant_staff', 'technician')),
    password_hash  TEXT NOT NULL,
    -- Bumped on password change and deletion; access tokens carry it and die with it.
    session_epoch  BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    deleted_at     BIGINT,
    -- Platform admins belong to no merchant; everyone else to exactly one.
    CHECK ((role = 'platform_admin' AND merchant_id IS NULL) OR (role <> 'platform_admin' AND merchant_id IS NOT NULL))
);
-- Usernames are stored lower-case and never reused, even after soft deletion; a phone
-- number belongs to one live user and is free again once that user is deleted.
CREATE UNIQUE INDEX users_username ON users (username);
CREATE UNIQUE INDEX users_phone_live ON users (phone) WHERE deleted_at IS NULL;
CREATE INDEX users_merchant_created ON users (merchant_id, created_at, id);

CREATE TABLE venues (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    name         TEXT NOT NULL,
    address      TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
CREATE INDEX venues_merchant_created ON venues (merchant_id, created_at, id);

-- Gateways belong to a venue; enrollment (public key, MQTT credentials) comes later and
-- fills status/public_key/enrolled_at.
CREATE TABLE gateways (
    id            TEXT PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    venue_id      TEXT NOT NULL REFERENCES venues (id),
    name          TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'enrolled', 'retired')),
    public_key    TEXT,
    enrolled_at   BIGINT,
    last_seen_at  BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);
CREATE INDEX gateways_merchant_created ON gateways (merchant_id, created_at, id);
CREATE INDEX gateways_venue ON gateways (venue_id);

-- Locks hang off a gateway's RS-485 bus; venue_id is copied from the gateway so venue
-- listings need no join.
CREATE TABLE locks (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    venue_id     TEXT NOT NULL REFERENCES venues (id),
    gateway_id   TEXT NOT NULL REFERENCES gateways (id),
    name         TEXT NOT NULL DEFAULT '',
    device_code  TEXT NOT NULL,
    bus_address  BIGINT NOT NULL CHECK (bus_address >= 1 AND bus_address <= 247),
    qr_code      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'online', 'offline', 'disabled')),
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
CREATE UNIQUE INDEX locks_device_code_live ON locks (device_code) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX locks_gateway_address_live ON locks (gateway_id, bus_address) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX locks_qr_code ON locks (qr_code);
CREATE INDEX locks_merchant_created ON locks (merchant_id, created_at, id);
CREATE INDEX locks_gateway ON locks (gateway_id);
CREATE INDEX locks_venue ON locks (venue_id);

-- Replacing a lock's plans soft-deletes the old rows, so orders can keep pointing at them.
CREATE TABLE price_plans (
    id                TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL REFERENCES merchants (id),
    lock_id           TEXT NOT NULL REFERENCES locks (id),
    name              TEXT NOT NULL,
    duration_minutes  BIGINT NOT NULL CHECK (duration_minutes > 0),
    price_fen         BIGINT NOT NULL CHECK (price_fen > 0),
    position          BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    deleted_at        BIGINT
);
CREATE INDEX price_plans_lock ON price_plans (lock_id, deleted_at, position);

-- One-time enrollment codes: only a SHA-256 of the code is stored.
CREATE TABLE enrollment_codes (
    id                TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL REFERENCES merchants (id),
    venue_id          TEXT NOT NULL REFERENCES venues (id),
    code_hash         TEXT NOT NULL,
    expires_at        BIGINT NOT NULL,
    used_at           BIGINT,
    used_by_gateway   TEXT REFERENCES gateways (id),
    created_by        TEXT NOT NULL REFERENCES users (id),
    created_at        BIGINT NOT NULL,
    deleted_at        BIGINT
);
CREATE UNIQUE INDEX enrollment_codes_hash ON enrollment_codes (code_hash);
CREATE INDEX enrollment_codes_merchant_created ON enrollment_codes (merchant_id, created_at, id);

-- Rotating refresh tokens: a family is one login; presenting a used token revokes it all.
CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id),
    token_hash  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX refresh_tokens_hash ON refresh_tokens (token_hash);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- Failed-login counters per login name, kept in the database so a restart does not
-- reset a lockout.
CREATE TABLE login_throttle (
    subject           TEXT PRIMARY KEY,
    failures          BIGINT NOT NULL,
    window_started_at BIGINT NOT NULL,
    locked_until      BIGINT NOT NULL DEFAULT 0,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    acquired_at  BIGINT NOT NULL
);

CREATE TABLE app_secrets (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
