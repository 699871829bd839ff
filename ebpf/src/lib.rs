//! Compiled CO-RE eBPF objects, their shared struct mirrors, and loading helpers
