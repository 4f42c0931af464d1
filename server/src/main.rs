//! `rtlink-server`: parses the command line, serves [`rtlink_server::app`] (over TLS with
//! `--tls-cert`/`--tls-key`), drains on SIGTERM / Ctrl-C, exits.

use std::time::Duration;

use clap::Parser;
use rtlink_server::config::{Config, LogFormat};
use rtlink_server::listener::{serve_with, ServeLimits};
use rtlink_server::{app, tls, AppState};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("rtlink-server: {message}");
        std::process::exit(2);
    }
    let filter = EnvFilter::try_from_env("RTLINK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
        _ => None,
    };
    let listen = config.listen;
    let limits = ServeLimits::from_config(&config);
    let state = AppState::from_config(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, "rtlink-server listening");

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal: draining");
        drain_state.drain().await;
        let _ = drained_tx.send(());
    };
    let metrics = state.metrics.clone();
    let router = app(state);
    let server = async move {
        match tls {
            Some(tls) => serve_with(listener, router, limits, metrics, Some(tls), shutdown).await,
            None => serve_with(listener, router, limits, metrics, None, shutdown).await,
        }
    };
    tokio::select! {
        result = server => result?,
        // Do not hang on a connection that ignores the drain.
        _ = async {
            if drained_rx.await.is_ok() {
                tokio::time::sleep(Duration::from_secs(5)).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("connections still open 5 s after the drain; exiting anyway"),
    }
    tracing::info!("bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
