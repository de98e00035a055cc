//! Giving freed heap back to the operating system.
//!
//! glibc's malloc keeps the memory a process frees for reuse, and returns only the free
//! block at the top of each heap to the kernel. A burst (a large sync, a peak of objects)
//! therefore leaves the daemon's RSS at its peak long after the objects are gone, and an
//! operator cannot tell that from a leak. `malloc_trim` also releases the free pages in the
//! middle of every arena. Elsewhere (musl, other allocators) this is a no-op.
//!
//! The caller decides when: `sync` calls it after full syncs, which are rare (the resync
//! period, retries, Node changes) and whose temporaries are the largest. `main` also caps
//! glibc at one arena ([`single_arena`]) before the runtime starts.

/// Returns freed heap memory to the operating system; `true` if any was released.
pub fn release_free_heap() -> bool {
    imp::trim()
}

/// Makes every thread allocate from the one main arena, unless the operator chose with
/// `MALLOC_ARENA_MAX`. glibc gives each thread that allocates its own arena (up to 8 per
/// core), and what one frees the others cannot reuse: the daemon's objects, plan and
/// kernel view are built on different runtime threads, and at 10,000 Services the extra
/// arenas held ~21 MiB (peak RSS 106 -> 85 MiB in the lab with one). The daemon's threads
/// are I/O-bound, so the shared arena's lock costs nothing measurable. Call before any
/// thread is started.
pub fn single_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        imp::single_arena();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    // SAFETY: `malloc_trim` takes a plain integer (the padding to keep at the top of the
    // heap) and no pointer, so it cannot read or write memory of ours; it returns 0 or 1 and
    // sets no errno that we read. glibc documents it MT-Safe (malloc_trim(3): it takes each
    // arena's lock in turn, as malloc and free do), so another thread allocating at the same
    // time is fine. It only returns pages that hold no allocated chunk (madvise
    // MADV_DONTNEED / shrinking the top), so no live allocation is affected. The symbol
    // exists in every glibc since 2.0, which `target_env = "gnu"` links against.
    #[allow(unsafe_code)]
    pub(super) fn trim() -> bool {
        unsafe { libc::malloc_trim(0) != 0 }
    }

    // SAFETY: `mallopt` takes two integers and no pointer; `M_ARENA_MAX` with a positive
    // value only caps how many arenas later allocations may create (existing allocations
    // are untouched), and glibc documents mallopt MT-Unsafe only against concurrent
    // mallopt calls, of which there are none: this runs once, before other threads exist.
    #[allow(unsafe_code)]
    pub(super) fn single_arena() {
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn trim() -> bool {
        false
    }

    pub(super) fn single_arena() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_heap_goes_back_to_the_os() {
        // Small blocks (below the mmap threshold, so they come from an arena), the first
        // 30,000 freed and the last kept: the free space is one run in the middle of the
        // arena, which glibc's free keeps until it is trimmed.
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1000]).collect();
        let kept = blocks.split_off(30_000);
        drop(blocks);
        assert!(release_free_heap(), "nothing released");
        assert_eq!(kept.len(), 10_000);
    }
}
