//! The browser glue: runs the sans-IO core with real transports, one timer and the page's
//! lifecycle events, and exposes the typed JS API (`RealtimeClient`, `Room`, `Presence`, `Typing`).
//!
//! Ownership is the whole design: a [`driver::Driver`] owns the core, its transports, its one timer
//! and its page listeners; dropping any of them removes what it added. No closure is leaked with `forget`.

mod api;
mod codec;
mod driver;
mod emitter;
mod error;
mod lifecycle;
pub mod listener;
mod options;
mod transports;
mod types;

pub use api::{live_listeners, Presence, RealtimeClient, Room, Typing};

/// The wasm allocator: lol_alloc's free list is a few hundred bytes of code where the default
/// (dlmalloc) is about 8 KB. The spin lock is uncontended (wasm32 here is single-threaded) and
/// keeps the crate free of `unsafe`.
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());
