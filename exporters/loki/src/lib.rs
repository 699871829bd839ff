//! Loki push exporter (snappy protobuf)
