//! rtlink: a realtime client SDK.
//!
//! [`core`] is a sans-IO state machine: it never touches a socket or reads a clock. Time comes in
//! as an argument and randomness from a seed, so the whole connection lifecycle is tested natively
//! with a virtual clock. The browser glue drives it.
//!
//! The wasm build is `no_std` (with `alloc`): no formatting machinery and no panic messages in
//! the module a browser downloads (see `wasm::panic`). Native builds keep std for the tests and
//! native drivers of the core, and so do the browser test binaries (feature `std`).
#![cfg_attr(all(target_arch = "wasm32", not(test), not(feature = "std")), no_std)]

extern crate alloc;

pub mod core;

/// The wasm module's boundary to the JS façade (wasm32 only; not in the browser test binaries,
/// which link std and drive the built package).
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
pub mod wasm;
