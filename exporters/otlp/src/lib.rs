//! OTLP exporter (gRPC and HTTP/protobuf) for metrics and logs
