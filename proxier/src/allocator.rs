//! The allocator settings of our processes (the daemon, and the sync benchmark that stands in
//! for it). Each binary declares jemalloc its global allocator and exports these settings as
//! jemalloc's `malloc_conf` ([`jemalloc_global_allocator`](crate::jemalloc_global_allocator));
//! the library itself allocates with whatever its user chose. The
//! feature `system-allocator` gives them glibc's malloc back, for heap profilers that
//! interpose it (heaptrack, massif): `--features ipvs-proxier/system-allocator`.
//!
//! Why jemalloc: glibc's malloc kept what a burst of objects left behind. After a churn of
//! Services peaking at 2.5x the steady count, its heap stayed +27 % above its level before
//! (RssAnon, +1 MiB at 60 Services: pages pinned by a few live chunks each, which
//! `malloc_trim` cannot return); with jemalloc and these settings, +2..4 % (the lab's churn
//! soak; BENCHMARKS.md). jemalloc keeps small objects in slabs of one size class and fills
//! the lowest slab with room first, so long-lived objects gather instead of spreading over
//! the pages of the peak.

/// jemalloc's `malloc_conf`, read once when it starts; `_RJEM_MALLOC_CONF` in the
/// environment overrides it.
/// - `narenas:1`: one arena, so what one runtime thread frees another reuses (with glibc's
///   per-thread arenas the daemon held ~21 MiB more at 10,000 Services); the threads are
///   I/O-bound.
/// - `tcache:false`: no standing per-thread caches holding on to freed objects. With them
///   the soak kept +10.0..10.6 % and started 0.9 MiB higher. Without them small allocations
///   are slower: a whole plan gets a cache for its duration ([`with_thread_cache`]), an
///   endpoint change does not (~1.6 ms instead of 1.0 at 10,000 Services; BENCHMARKS.md);
///   `_RJEM_MALLOC_CONF=tcache:true` trades the memory for that speed.
/// - `dirty_decay_ms:0`, `muzzy_decay_ms:0`: pages go back to the kernel as soon as they
///   are free, not seconds later, so a sync's temporaries are not still resident when the
///   next sync allocates (the daemon needs no trim after a sync).
/// - `thp:never`, `metadata_thp:disabled`: no transparent huge pages; on a kernel with THP
///   `always` (the lab's Debian) each partly used 2 MiB of the heap was resident whole
///   (RssAnon 10.7 MiB instead of 5.6 at rest in the soak).
pub const JEMALLOC_CONF: &[u8; 89] =
    b"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0,thp:never,metadata_thp:disabled\0";

#[doc(hidden)]
pub use tikv_jemallocator as jemallocator;

/// Declares jemalloc, with [`JEMALLOC_CONF`], the global allocator of the binary whose crate
/// root invokes it; with the feature `system-allocator`, nothing (glibc's malloc). The binary
/// also calls [`use_thread_cache_while_computing`] first thing in `main`.
#[cfg(not(feature = "system-allocator"))]
#[macro_export]
macro_rules! jemalloc_global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::allocator::jemallocator::Jemalloc =
            $crate::allocator::jemallocator::Jemalloc;

        // SAFETY: jemalloc (built by tikv-jemalloc-sys with the `_rjem_` symbol prefix)
        // declares `const char *_rjem_malloc_conf` weak and reads it once, at its
        // initialisation, as a NUL-terminated C string; this strong definition replaces its
        // default. A `&[u8; N]` is one thin pointer, the layout of `const char *`; it points
        // to immutable 'static bytes that end in NUL (`JEMALLOC_CONF`), so the read is valid
        // whenever it happens, and nothing writes it.
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub static malloc_conf: &[u8; 89] = $crate::allocator::JEMALLOC_CONF;
    };
}

/// With the feature `system-allocator`: the binary allocates with glibc's malloc.
#[cfg(feature = "system-allocator")]
#[macro_export]
macro_rules! jemalloc_global_allocator {
    () => {};
}

/// Whether [`with_thread_cache`] turns jemalloc's thread cache on: set by the binaries whose
/// allocator is jemalloc ([`use_thread_cache_while_computing`]), so the library's other users
/// (tests, fuzzers, glibc builds) never start a jemalloc of their own.
static THREAD_CACHE_WHILE_COMPUTING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes [`with_thread_cache`] effective, for a process whose global allocator is jemalloc
/// with [`JEMALLOC_CONF`] ([`jemalloc_global_allocator`]); a no-op with `system-allocator`.
pub fn use_thread_cache_while_computing() {
    if cfg!(not(feature = "system-allocator")) {
        THREAD_CACHE_WHILE_COMPUTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `f`, a large burst of allocations on this thread (planning or deciding every
/// Service), with a jemalloc thread cache, and empties the cache back into the arena
/// afterwards. Without a cache every allocation takes the arena's lock and slab bookkeeping:
/// a whole plan took ~2x as long as with glibc's malloc. A cache kept between bursts held
/// freed objects across slabs that then could not be returned (the churn soak's +10 %);
/// emptied after each burst it holds nothing at rest. Not for small work: creating and
/// emptying the cache made one incremental replan slower (0.7 -> 1.0 ms in the lab). `f`
/// is synchronous, so the cache is this thread's for exactly its duration.
pub fn with_thread_cache<R>(f: impl FnOnce() -> R) -> R {
    if !THREAD_CACHE_WHILE_COMPUTING.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    imp::set_thread_cache(true);
    let result = f();
    imp::set_thread_cache(false);
    result
}

#[cfg(not(feature = "system-allocator"))]
mod imp {
    use tikv_jemalloc_ctl::{Access, AsName};

    /// `thread.tcache.enabled`: on creates this thread's cache, off flushes and frees it.
    pub(super) fn set_thread_cache(on: bool) {
        if let Err(error) = b"thread.tcache.enabled\0".name().write(on) {
            // Only costs speed (on) or memory held until the next burst (off).
            tracing::warn!(%error, on, "jemalloc thread cache not switched");
        }
    }
}

#[cfg(feature = "system-allocator")]
mod imp {
    pub(super) fn set_thread_cache(_on: bool) {}
}
