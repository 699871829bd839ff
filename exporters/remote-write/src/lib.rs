//! Prometheus remote_write 1.0 exporter
