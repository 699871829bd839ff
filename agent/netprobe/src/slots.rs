//! The kernel's socket table, read through a read-only memory mapping: every established
//! connection the probes track, counted per peer for `nodescope_tcp_connections_active`
//! (the kernel keeps no active gauge per peer: accepting a connection touches no
//! per-peer state).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};

use nodescope_ebpf::net::{PeerKey, SockState, SockTags, SOCK_WAYS};

/// Flag of an established tracked socket (C: NS_SOCK_ESTABLISHED).
const ESTABLISHED: u8 = 1;

/// An `mmap` of a `BPF_F_MMAPABLE` array map (shared with the kernel).
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared memory the kernel updates; we read it with volatile loads
// of plain integers and write only with atomic compare-and-swap, from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the `entries` values of `value_size` bytes of array `map`; `writable` for
    /// [`Mapping::compare_exchange_u64`].
    pub(crate) fn new(
        map: &aya::maps::MapData,
        entries: usize,
        value_size: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        let page = 4096usize;
        let len = (entries * value_size.next_multiple_of(8)).next_multiple_of(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF array's values, shared; the fd is valid for the call, and
        // the kernel keeps the mapping valid after it is closed.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The `i`th `T` (element size `T`'s size rounded to 8), or None past the end.
    pub(crate) fn get<T: Copy>(&self, i: usize) -> Option<T> {
        let size = std::mem::size_of::<T>().next_multiple_of(8);
        let off = i.checked_mul(size)?;
        if off + std::mem::size_of::<T>() > self.len {
            return None;
        }
        // SAFETY: in bounds (checked), aligned (array values are 8-aligned, T has
        // alignment <= 8) and every bit pattern is a valid T (plain integer structs). The
        // kernel may change it meanwhile: a torn read is possible and harmless (a gauge).
        Some(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<T>()) })
    }
}

impl Mapping {
    /// Atomically replaces the u64 at byte offset `off` by `new` if it is `current`
    /// (the kernel updates the same words with its own atomic instructions).
    pub(crate) fn compare_exchange_u64(&self, off: usize, current: u64, new: u64) -> bool {
        if !off.is_multiple_of(8) || off + 8 > self.len {
            return false;
        }
        // SAFETY: in bounds and 8-aligned (checked); the mapping is writable when this
        // is used (the in-flight table), and AtomicU64 has u64's layout.
        let a = unsafe { &*(self.ptr.add(off) as *const std::sync::atomic::AtomicU64) };
        a.compare_exchange(
            current,
            new,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        )
        .is_ok()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// The `socks` and `sock_tags` maps, mapped.
pub(crate) struct SockTable {
    socks: Mapping,
    tags: Mapping,
    sets: usize,
}

impl SockTable {
    pub(crate) fn new(
        socks: &aya::maps::MapData,
        tags: &aya::maps::MapData,
        sets: usize,
    ) -> std::io::Result<Self> {
        Ok(SockTable {
            socks: Mapping::new(
                socks,
                sets * SOCK_WAYS as usize,
                std::mem::size_of::<SockState>(),
                false,
            )?,
            tags: Mapping::new(tags, sets, std::mem::size_of::<SockTags>(), false)?,
            sets,
        })
    }

    /// Established tracked connections per peer key.
    pub(crate) fn active(&self) -> HashMap<PeerKey, i64> {
        let mut out: HashMap<PeerKey, i64> = HashMap::new();
        for set in 0..self.sets {
            let Some(t) = self.tags.get::<SockTags>(set) else {
                break;
            };
            for (way, &owner) in t.sk.iter().enumerate() {
                if owner == 0 {
                    continue;
                }
                let Some(s) = self.socks.get::<SockState>(set * SOCK_WAYS as usize + way) else {
                    continue;
                };
                if s.flags & ESTABLISHED != 0 {
                    *out.entry(s.key).or_default() += 1;
                }
            }
        }
        out
    }
}
