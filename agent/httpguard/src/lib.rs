//! HTTP API hardening.
