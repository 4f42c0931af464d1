//! rtlink-server: the reference server of the rtlink realtime SDK.
//!
//! [`app::app`] builds the router from an [`app::AppState`]; `main.rs` only parses the command
//! line and serves it. See docs/PROTOCOL.md for the wire protocol this implements, and
//! [`broker`] for the seam a multi-node deployment plugs into.

pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod ended_sessions;
pub mod http;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod presence;
pub mod presence_batch;
pub mod proxy;
pub mod replay;
pub mod rooms;
pub mod session;
pub mod supervisor;
pub mod tls;
pub mod transport;
pub mod typing;
pub mod write_window;
pub mod ws_wire;

pub use app::{app, serve, AppState};
pub use config::Config;
