//! eBPF network latency probes (tracepoints only): connect latency, RTT, retransmits, resets, drops
