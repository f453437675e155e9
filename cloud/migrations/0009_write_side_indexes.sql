-- Fewer indexes on the tables every order writes (issue 6, the online order flow).
-- Each index an order's transactions touch is one more page to write (a WAL frame on SQLite,
-- a new index entry on PostgreSQL, where an update that changes an indexed column cannot be
-- HOT). Counted with the order_flow bench: see docs/benchmarks.md, "Status after session 6".
-- Portable SQL: DROP/CREATE INDEX IF [NOT] EXISTS.

-- The unlock-timeout job looks for `status = 'unlocking' AND unlock_deadline_at < now`;
-- orders stay in `unlocking` for seconds, so the (status, pay_deadline_at) index's status
-- prefix finds them as well, and this index only cost a write on every status change.
DROP INDEX IF EXISTS orders_status_unlock_deadline;

-- Served only the roll-up rebuild (a repair) once the dashboard moved to the roll-ups (0007);
-- the primary key finds those orders.
DROP INDEX IF EXISTS orders_id_lock;

-- A prefix of ledger_entries_merchant_day_kind (0008), which answers the same lookups.
DROP INDEX IF EXISTS ledger_entries_merchant_day;

-- The platform admin's day figures read every merchant's days; covering the sums made every
-- payment rewrite this index (and, on PostgreSQL, made the merchant's day row's updates
-- non-HOT, leaving one dead index entry per payment until vacuum). Without the sums, an
-- update touches only the table row; the admin's read fetches at most 30 rows per merchant.
DROP INDEX IF EXISTS ledger_merchant_days_day;
CREATE INDEX IF NOT EXISTS ledger_merchant_days_by_day ON ledger_merchant_days (day, merchant_id);
