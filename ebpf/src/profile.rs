//! Profiler object and struct mirrors.
