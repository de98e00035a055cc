//! The allocator settings of our processes (the daemon, and the sync benchmark that stands in
//! for it). Each binary declares jemalloc its global allocator and exports these settings as
//! jemalloc's `malloc_conf`; the library itself allocates with whatever its user chose. The
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
/// - `tcache:false`: no per-thread caches holding on to freed objects. With them the soak
///   kept +10.0..10.6 % and started 0.9 MiB higher; without them planning is ~2x slower (an
///   endpoint change 1.4 ms instead of 1.0 at 10,000 Services; BENCHMARKS.md), which
///   `_RJEM_MALLOC_CONF=tcache:true` buys back.
/// - `dirty_decay_ms:0`, `muzzy_decay_ms:0`: pages go back to the kernel as soon as they
///   are free, not seconds later, so a sync's temporaries are not still resident when the
///   next sync allocates (the daemon needs no trim after a sync).
/// - `thp:never`, `metadata_thp:disabled`: no transparent huge pages; on a kernel with THP
///   `always` (the lab's Debian) each partly used 2 MiB of the heap was resident whole
///   (RssAnon 10.7 MiB instead of 5.6 at rest in the soak).
pub const JEMALLOC_CONF: &[u8; 89] =
    b"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0,thp:never,metadata_thp:disabled\0";
