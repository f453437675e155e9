//! The lock controller simulator, `dmr-lock-sim`. Filled in by the simulator work.
