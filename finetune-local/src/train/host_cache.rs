//! Keeps the CPU memory of libtorch's tensors for reuse while training
//! runs (`host_cache.cpp`): libtorch gives every CPU block back to malloc
//! when a tensor dies, and a step allocates and frees the same large blocks
//! by the thousand. The trainer installs the cache for a CPU run and ticks
//! it after each optimizer step; blocks no request took during a step go
//! back to the system at the tick, and all of them when the last guard is
//! dropped. Installed only over libtorch's default CPU allocator: an
//! application that set its own keeps it.
#![allow(unsafe_code)]

/// While alive, libtorch's CPU tensors take their memory from the cache
/// (see the module documentation). Process-wide: guards may overlap (two
/// trainings in one process share the cache), and the last one dropped
/// puts the previous allocator back.
#[derive(Debug)]
pub struct HostCache {
    _private: (),
}

/// The cache's counters, for the whole process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCacheStats {
    /// Requests served with a kept block.
    pub hits: u64,
    /// Requests of a cached size that allocated a new block.
    pub misses: u64,
    /// Bytes of kept blocks waiting for a request.
    pub idle_bytes: u64,
    /// Bytes of cached-size blocks held by tensors.
    pub live_bytes: u64,
    /// Whether libtorch allocates through the cache now.
    pub installed: bool,
}

impl HostCache {
    /// Installs the cache, or `None` where it cannot be: another CPU
    /// allocator than libtorch's default is installed, or this build has no
    /// libtorch shims.
    pub fn install() -> Option<Self> {
        ffi::install().then_some(Self { _private: () })
    }

    /// Ends a training step: the kept blocks that no request took since the
    /// previous tick are freed.
    pub fn tick(&self) {
        ffi::tick();
    }

    /// The process's counters.
    pub fn stats() -> HostCacheStats {
        ffi::stats()
    }
}

impl Drop for HostCache {
    fn drop(&mut self) {
        ffi::uninstall();
    }
}

#[cfg(finetune_shims)]
mod ffi {
    use super::HostCacheStats;

    unsafe extern "C" {
        fn ft_host_cache_install() -> i32;
        fn ft_host_cache_uninstall();
        fn ft_host_cache_tick();
        fn ft_host_cache_stats(out: *mut i64);
    }

    pub(super) fn install() -> bool {
        // SAFETY: no arguments; paired with `uninstall` by the guard.
        unsafe { ft_host_cache_install() == 1 }
    }

    pub(super) fn uninstall() {
        // SAFETY: called once per installed guard, from its drop.
        unsafe { ft_host_cache_uninstall() }
    }

    pub(super) fn tick() {
        // SAFETY: no arguments.
        unsafe { ft_host_cache_tick() }
    }

    pub(super) fn stats() -> HostCacheStats {
        let mut out = [0i64; 5];
        // SAFETY: `out` holds the five values the function writes.
        unsafe { ft_host_cache_stats(out.as_mut_ptr()) };
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        HostCacheStats {
            hits: n(out[0]),
            misses: n(out[1]),
            idle_bytes: n(out[2]),
            live_bytes: n(out[3]),
            installed: out[4] == 1,
        }
    }
}

#[cfg(not(finetune_shims))]
mod ffi {
    use super::HostCacheStats;

    pub(super) fn install() -> bool {
        false
    }

    pub(super) fn uninstall() {}

    pub(super) fn tick() {}

    pub(super) fn stats() -> HostCacheStats {
        HostCacheStats { hits: 0, misses: 0, idle_bytes: 0, live_bytes: 0, installed: false }
    }
}
