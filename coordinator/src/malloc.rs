//! How the coordinator asks the C allocator to place its memory.
//!
//! Every agent connection's HTTP/2 layer allocates a 16 KiB write buffer (fixed in the HTTP/2
//! library) of which a heartbeat stream writes the first few hundred bytes. In the allocator's
//! heap such a buffer lands on pages other allocations touch, so all of it is resident; served
//! by its own mapping, only the pages written are. With 10,000 agents that is ~30 MB of the
//! coordinator's resident memory (BENCHMARKS.md, "Coordinator memory at 10,000 agents").

/// Allocations of this size and more get their own mapping (glibc's default threshold starts
/// at 128 KiB and rises with what the process frees).
pub const MMAP_THRESHOLD_BYTES: i32 = 16 * 1024;

/// Serves allocations of [`MMAP_THRESHOLD_BYTES`] and more from their own mappings. Does
/// nothing where the allocator is not glibc's.
#[allow(unsafe_code)]
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` sets one of glibc's allocator parameters; it takes any value and
        // answers 0 for one it refuses. Nothing is allocated or freed by the call itself.
        let set = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        if set != 1 {
            tracing::debug!("the allocator kept its own mapping threshold");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_allocation_still_works_after_the_threshold_is_set() {
        map_large_allocations();
        let buffer = vec![7u8; 2 * MMAP_THRESHOLD_BYTES as usize];
        assert!(buffer.iter().all(|b| *b == 7));
    }
}
