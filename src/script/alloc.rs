//! The process's allocator: the system's, counting the bytes each thread holds, so
//! that a run's memory is bounded at O(1) per change (`max_memory_bytes`, checked
//! in the engine's progress callback) instead of Rhai recomputing the size of a
//! whole value after every change, which made building big values quadratic.
//!
//! A thread's count is what it allocated minus what it freed, whoever allocated the
//! freed block: memory a run frees that another thread allocated lowers it, memory
//! a run leaves for another thread to free stays counted on the run's thread. A run
//! compares the count against the count when it began.
//!
//! Why a wrapper over `System` and not jemalloc's per-thread statistics: the same
//! O(1) counter for two thread-local additions per allocation, without building
//! jemalloc (a C library, minutes on two cores) into every build and fuzz target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    /// Bytes this thread allocated less bytes it freed. A const initializer and no
    /// destructor: reading it never allocates and works during thread teardown.
    static HELD: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn add(n: i64) {
    let _ = HELD.try_with(|c| c.set(c.get().wrapping_add(n)));
}

/// Bytes this thread holds by the count (see the module's comment).
#[inline]
pub fn thread_held() -> i64 {
    HELD.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every call is passed to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            add(l.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            add(l.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        add(-(l.size() as i64));
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // The block as it is: Rhai's strings (smartstring) call `realloc` to the
        // capacity they already have on every append. The system's allocator returns
        // at once too, but allocators that always move a block (the address
        // sanitizer's) would copy the whole string on every append.
        if new_size == l.size() {
            return p;
        }
        let q = unsafe { System.realloc(p, l, new_size) };
        if !q.is_null() {
            add(new_size as i64 - l.size() as i64);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
