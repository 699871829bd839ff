//! Host metrics collectors with node_exporter-compatible names, read through a configurable host root
