//! Pyroscope ingest exporter for continuous profiles
