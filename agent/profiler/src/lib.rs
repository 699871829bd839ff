//! CPU profiling: eBPF sampler, symbolization, pprof output, self-profiling
