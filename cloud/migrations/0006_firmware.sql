-- Firmware releases (issue #7): vendor-signed lock controller images that platform admins
-- publish and technicians download to flash with `dmr-tech flash --file`. The image itself
-- is kept in the row (BYTEA on PostgreSQL; SQLite stores the bytes as a BLOB whatever the
-- declared type), so one database backup holds everything. List queries name their
-- columns and never read `image`.
--
-- A (hardware, version) pair is published once, ever: a withdrawn version keeps its row
-- (soft withdrawal), so the same number can never come back with different bytes.
CREATE TABLE firmware_releases (
    id              TEXT PRIMARY KEY,
    hardware        BIGINT NOT NULL,
    version         TEXT NOT NULL,
    -- major << 24 | minor << 16 | patch: sorts versions numerically (1.10.0 after 1.9.0).
    version_order   BIGINT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    payload_len     BIGINT NOT NULL,
    -- Lower-case hex: the payload hash the header signs, and the whole file's hash (what a
    -- technician can check a download against).
    payload_sha256  TEXT NOT NULL,
    image_sha256    TEXT NOT NULL,
    key_id          BIGINT NOT NULL,
    notes           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('published', 'withdrawn')),
    created_by      TEXT NOT NULL REFERENCES users (id),
    created_at      BIGINT NOT NULL,
    withdrawn_by    TEXT REFERENCES users (id),
    withdrawn_at    BIGINT,
    withdrawn_reason TEXT,
    image           BYTEA NOT NULL,
    UNIQUE (hardware, version)
);
CREATE INDEX firmware_releases_created ON firmware_releases (created_at, id);
