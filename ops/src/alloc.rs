//! The C allocator's settings for Domicile's long-running processes.
//!
//! glibc's `malloc` raises its mmap threshold each time a large block is freed, up to 32 MiB,
//! after which large request buffers (an 8 MiB ingest, a node's query pages) come from the heap
//! arenas, whose freed pages are kept by the process. The gateway's peak RSS under a flood of
//! 8 MiB requests fell from 98 to 55 MiB with the threshold fixed, and a node's RSS after two
//! minutes of the soak from 93 to 72 MiB with arenas capped as well (BENCHMARKS.md, "Memory").
//! [`tune`] fixes the threshold at 128 KiB (glibc's starting value), so every block that large
//! is mapped on its own and unmapped when freed, and caps the arenas at one per core.

/// Fixes glibc's mmap threshold and caps its arenas; does nothing on other C libraries. Call
/// first thing in `main`, before any thread is started.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let cores = i32::try_from(cores).unwrap_or(i32::MAX);
        // SAFETY: `mallopt` only changes glibc's allocator parameters; called before the
        // process starts threads, as its documentation asks, with values glibc accepts (it
        // ignores, and reports 0 for, any it does not).
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            libc::mallopt(libc::M_ARENA_MAX, cores);
        }
    }
}
