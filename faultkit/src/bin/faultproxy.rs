//! `faultproxy`: the fault proxy as a process, for tests that are not Rust (browser tests,
//! `scripts/with-servers`). Its control API is documented in the `faultkit` crate docs.

use std::net::SocketAddr;

use clap::Parser;
use faultkit::{Mode, ProxyBuilder};

/// A fault proxy on loopback in front of one or more upstreams (round robin per connection).
#[derive(Parser)]
#[command(name = "faultproxy")]
struct Args {
    /// Where clients connect (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An upstream server; repeat for round robin over several.
    #[arg(long, required = true)]
    upstream: Vec<SocketAddr>,
    /// Where the HTTP control API listens (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Forward opaque bytes (e.g. Redis) instead of HTTP/1.1.
    #[arg(long)]
    tcp: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = if args.tcp { Mode::Tcp } else { Mode::Http };
    let proxy = ProxyBuilder::new(mode, args.upstream).listen(args.listen).control(args.control).start().await?;
    let control = proxy.control_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("{}", serde_json::json!({ "proxy": proxy.addr().to_string(), "control": control }));
    shutdown().await;
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
