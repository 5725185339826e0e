//! Handing freed heap memory back to the system after a burst of work.
//!
//! glibc keeps what a thread frees inside its arena for later allocations. After a large sweep
//! that is megabytes no one uses again (docs/BENCHMARKS.md, "Memory at 1,000,000 tasks").
//! `orchestratord` also caps the arenas at start (`tune_allocator` in `main.rs`).

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
