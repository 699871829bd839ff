//! Shared delivery machinery for push exporters: batching, backoff, memory bound, disk WAL
