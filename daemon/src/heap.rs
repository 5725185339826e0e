//! Handing freed heap memory back to the system after a burst of work.
//!
//! glibc's `malloc` serves SQLite (its page caches) and the C libraries; the daemon's own
//! allocations are mimalloc's, which returns freed pages to the system by itself after a short
//! delay (`GLOBAL` in `main.rs`). glibc keeps what a thread frees inside its arena for later
//! allocations. After a large sweep that is megabytes no one uses again (docs/BENCHMARKS.md,
//! "Memory at 1,000,000 tasks").
//! `orchestratord` also caps the arenas at start (`tune_allocator` in `main.rs`) and fixes the mmap
//! threshold once its config is loaded ([`fix_mmap_threshold`]).

/// Fix glibc's mmap threshold, so that a large buffer (a sweep's batch, a summary's durations) is
/// returned to the system when freed instead of raising the threshold and staying in the heap
/// (docs/BENCHMARKS.md, "Memory at 1,000,000 tasks"); then hand back what the heap holds free.
///
/// Call it once, before any other thread starts (glibc's other threads read the threshold without a
/// lock), and after the config is loaded: compiling the routing rules' patterns allocates and frees
/// a table of about 400 KiB per pattern, which under the fixed threshold is a fresh mapping each
/// time, every page of it faulted in and zeroed (docs/BENCHMARKS.md, "Ready on 1,000,000 tasks").
/// `orchestratord` calls it from `run::prepare`, after loading the config and before opening the
/// store.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, and no other thread exists yet to read
    // them. A parameter it refuses (return 0) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    release_free();
}

/// Return the free pages of every arena to the system. It walks the arenas' free lists, taking
/// each arena's lock as an allocation would. Elsewhere than glibc it does nothing.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reads glibc's own bookkeeping and advises the kernel that free
    // pages may be dropped; no memory in use is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
