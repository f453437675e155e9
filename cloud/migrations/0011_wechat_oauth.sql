-- WeChat OAuth for the phone page (cloud/src/orders/wechat_oauth.rs) gets its own tables.
-- Its pending states and openid bindings were kept in app_secrets under name prefixes; that
-- table is for the cloud's own secrets (JWT key, broker password), and a payer's openid is
-- neither a secret of ours nor something a prefix scan should find.

-- A sign-in link handed out and not yet used: the hash of its state, the hash of the device
-- session that asked for it, and the lock page to go back to. Consumed by a conditional delete.
CREATE TABLE wechat_oauth_states (
    state_hash    TEXT PRIMARY KEY,
    session_hash  TEXT NOT NULL,
    qr_code       TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX wechat_oauth_states_expires ON wechat_oauth_states (expires_at);

-- The openid WeChat gave for a device session (hash), used to pay by JSAPI.
CREATE TABLE wechat_openids (
    session_hash  TEXT PRIMARY KEY,
    openid        TEXT NOT NULL,
    bound_at      BIGINT NOT NULL
);

-- Bindings made before this migration move over (length('wechat_openid:') = 14); pending
-- states live ten minutes and are simply dropped: the payer opens the lock page again.
INSERT INTO wechat_openids (session_hash, openid, bound_at)
    SELECT substr(name, 15), value, created_at FROM app_secrets WHERE name LIKE 'wechat_openid:%';
DELETE FROM app_secrets WHERE name LIKE 'wechat_openid:%' OR name LIKE 'wechat_oauth_state:%';
