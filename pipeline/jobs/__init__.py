"""Training as jobs: a store, a local worker, and backends behind one contract (submit/status/cancel/list)."""
