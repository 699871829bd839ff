//! Compiled CO-RE eBPF objects (built from `ebpf/c/*.bpf.c` by `cargo xtask build-ebpf`
//! and committed; `cargo xtask check-ebpf` fails when one is stale), the Rust mirrors of
//! the structs they share with user space, and the helpers that prepare the kernel
//! filesystems and load objects with aya.

pub mod dns;
pub mod loader;
pub mod net;
pub mod profile;
