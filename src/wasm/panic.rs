//! What the module needs without std: an allocator, and a panic handler that formats nothing.
//!
//! A panic in the module is a bug (the glue does not panic by design); it stops the module with
//! `unreachable` (a `RuntimeError` in JS). Formatting its message would pull `core::fmt` into
//! every download: several kilobytes for a message nobody reads. `scripts/size-report` fails the
//! build if `core::fmt` code reappears.

/// The wasm allocator: lol_alloc's free list is a few hundred bytes of code where the default
/// (dlmalloc) is about 8 KB. The spin lock is uncontended (wasm32 here is single-threaded).
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
