//! Settings for glibc's allocator, made once at the start of every scifaas process.
//!
//! Large task payloads pass through each process in buffers of one to several MiB (a
//! request body, a task's payload, a frame to a manager). glibc serves a block that large
//! with a fresh `mmap` and returns it with `munmap` when it is freed, so the next buffer
//! of the same size starts from untouched memory again: one page fault and one zeroed
//! page per 4 KiB. In a 1 MiB-argument run, page faults were 23 % of all CPU samples
//! (`perf record`). Keeping such blocks in the heap, and not trimming the heap back at
//! every free, lets the next buffer reuse pages already mapped: 1 MiB-argument throughput
//! rose by about 10 % (alternating runs of `scifaas bench`). The memory kept is what the
//! process's own peak of large buffers was; it is given back to glibc for reuse, not lost.

/// Blocks up to this size come from the heap, not from a fresh mapping.
const MMAP_THRESHOLD: i32 = 64 << 20;

/// The heap is given back to the kernel only when this much is free at its top.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the settings above. Call before any other thread starts.
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt only changes the allocator's parameters; it is called once, before
    // the process starts any thread, with parameters glibc documents. A value it refuses
    // leaves the default in place (it returns 0), which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
