//! Prometheus text 0.0.4 and OpenMetrics exposition of the telemetry model
