//! glibc malloc settings for a small steady footprint (measured in docs/benchmarks.md,
//! "Container memory"; `scripts/bench-image-memory.sh`).
//!
//! With glibc's defaults every thread that allocates may get its own arena (up to 8 per
//! core), each keeping freed memory, and large buffers (a 1–16 MB `/metrics` body, a profile)
//! raise the mmap threshold dynamically so later ones land in the arenas and stay there. On
//! the `full` overlay's workload that was 115–125 MB resident, mostly free memory held by
//! arenas. Here: [`ARENA_MAX`] arenas, blocks of [`MMAP_THRESHOLD`] and more mmapped (and
//! unmapped on free), and free memory above [`TRIM_THRESHOLD`] at the top of a heap returned.
//! A setting given in the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`, or `GLIBC_TUNABLES=glibc.malloc.*`) is left alone;
//! `NODESCOPE_MALLOC=glibc` leaves all of glibc's defaults.

/// Arenas shared by all threads (glibc's default is 8 × cores).
pub const ARENA_MAX: i32 = 1;
/// Allocations at least this large are served by mmap and returned on free (fixed: glibc's
/// default starts at 128 KiB but grows up to 32 MiB after large frees).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at the top of a heap beyond this is returned to the kernel.
pub const TRIM_THRESHOLD: i32 = 128 * 1024;

/// The settings to apply given the environment `env`: (tunable name, mallopt parameter,
/// value), leaving out any the environment already sets.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn plan(env: &dyn Fn(&str) -> Option<String>) -> Vec<(&'static str, i32, i32)> {
    if env("NODESCOPE_MALLOC").as_deref() == Some("glibc") {
        return Vec::new();
    }
    let tunables = env("GLIBC_TUNABLES").unwrap_or_default();
    [
        (
            "MALLOC_ARENA_MAX",
            "arena_max",
            libc::M_ARENA_MAX,
            ARENA_MAX,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            "mmap_threshold",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            "trim_threshold",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
        ),
    ]
    .into_iter()
    .filter(|(var, tunable, _, _)| {
        env(var).is_none() && !tunables.contains(&format!("glibc.malloc.{tunable}"))
    })
    .map(|(_, tunable, param, value)| (tunable, param, value))
    .collect()
}

/// Applies the settings above; call before the runtime starts its threads. Returns what was
/// applied, as (tunable, value) pairs, for the start-up log.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() -> Vec<(&'static str, i32)> {
    let mut applied = Vec::new();
    for (tunable, param, value) in plan(&|k| std::env::var(k).ok()) {
        // SAFETY: mallopt takes plain integers; glibc returns 0 on an invalid value and
        // leaves the setting unchanged.
        if unsafe { libc::mallopt(param, value) } == 1 {
            applied.push((tunable, value));
        }
    }
    applied
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() -> Vec<(&'static str, i32)> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn names(env: &[(&str, &str)]) -> Vec<&'static str> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plan(&|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .into_iter()
            .map(|(n, _, _)| n)
            .collect()
    }

    #[test]
    fn environment_settings_win() {
        assert_eq!(
            names(&[]),
            ["arena_max", "mmap_threshold", "trim_threshold"]
        );
        assert_eq!(
            names(&[("MALLOC_ARENA_MAX", "4")]),
            ["mmap_threshold", "trim_threshold"]
        );
        assert_eq!(
            names(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=2"
            )]),
            ["mmap_threshold"]
        );
        assert_eq!(
            names(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]).len(),
            3
        );
    }

    #[test]
    fn glibc_accepts_the_values() {
        // mallopt returns 1 for each accepted setting (0 for an out-of-range value).
        for (tunable, param, value) in plan(&|_| None) {
            // SAFETY: as in tune_allocator.
            assert_eq!(
                unsafe { libc::mallopt(param, value) },
                1,
                "{tunable}={value}"
            );
        }
    }
}
