-- Indexes for the console reads at scale (issue 5: 100,000 locks, 1,000,000 orders).
-- Measured with cloud/benches/api_load.rs; see docs/benchmarks.md "API latency, console reads".
-- Portable SQL: plain composite indexes, IF NOT EXISTS.

-- The order list filtered by status (the console's most common filter): the page and its
-- COUNT(*) become a range of this index instead of a walk over every order of the merchant
-- that reads each row to test its status.
CREATE INDEX IF NOT EXISTS orders_merchant_status_created ON orders (merchant_id, status, created_at, id);

-- The dashboard reads 30 days of a merchant's ledger twice (per-day sums and busiest
-- locks), filtering on kind and summing amount_fen: with these columns in the index both
-- are answered from the index alone, without a table lookup per entry.
CREATE INDEX IF NOT EXISTS ledger_entries_merchant_day_kind ON ledger_entries (merchant_id, day, kind, amount_fen, order_id);

-- Busiest locks joins each of those entries to its order only for lock_id: covering that
-- lookup saves reading one wide order row per entry.
CREATE INDEX IF NOT EXISTS orders_id_lock ON orders (id, lock_id);
