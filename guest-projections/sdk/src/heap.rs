//! The heap of a component built from this crate (wasm32 only).
//!
//! `dlmalloc` (the allocator `std` itself uses on `wasm32-unknown-unknown`)
//! over pages from two places:
//!
//! 1. **An arena in the module's initial memory** ([`ARENA_BYTES`], a zeroed
//!    static, so it is `.bss`: no data in the module, no bytes to copy).
//!    The host gives every event a fresh instance; an event that fits in the
//!    arena never grows the memory. Growing costs more than the pages: the
//!    host's pooled memory makes the grown pages accessible (`mprotect`) and,
//!    when the slot is reused, inaccessible again, and each of those is a
//!    TLB flush on every core. Measured on the bench backlog, a heap that
//!    grew for every event spent 7% of the host's CPU in those two calls.
//! 2. **`memory.grow`** for anything past the arena (a large event), in
//!    64 KiB pages, up to the host's memory cap.
//!
//! Memory is never handed back: an instance lives for one event.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// Bytes of the arena: room for the payload, its parsed document and the
/// operations of any ordinary event (the golden fixtures need a few KiB).
pub const ARENA_BYTES: usize = 256 << 10;

/// The wasm page.
const PAGE: usize = 64 << 10;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: a component instance runs on one thread, and the arena is only
// ever reached through dlmalloc, after `Pages` hands it out once.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Where dlmalloc gets its pages: the arena first, then `memory.grow`.
struct Pages {
    arena_taken: AtomicBool,
}

// SAFETY: returns memory nobody else uses (the arena once, then fresh pages
// past the memory's end), zeroed (a fresh instance's `.bss` and grown pages
// are zero), and never releases any.
unsafe impl dlmalloc::Allocator for Pages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if size <= ARENA_BYTES && !self.arena_taken.swap(true, Ordering::Relaxed) {
            return (ARENA.0.get().cast(), ARENA_BYTES, 0);
        }
        let pages = size.div_ceil(PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (core::ptr::null_mut(), 0, 0);
        }
        ((previous * PAGE) as *mut u8, pages * PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        core::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// The global allocator: one dlmalloc over [`Pages`].
pub struct Heap(UnsafeCell<dlmalloc::Dlmalloc<Pages>>);

// SAFETY: a component instance runs on one thread (the WIT world has no
// threads, and wasm32-wasip2 code without the atomics feature cannot
// start one), so the allocator is never entered twice at once.
unsafe impl Sync for Heap {}

impl Heap {
    const fn new() -> Self {
        Heap(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(
            Pages {
                arena_taken: AtomicBool::new(false),
            },
        )))
    }
}

// SAFETY: dlmalloc implements the `GlobalAlloc` contract; see `Sync` above
// for why no lock is needed.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[global_allocator]
static HEAP: Heap = Heap::new();
