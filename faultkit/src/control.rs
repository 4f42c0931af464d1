//! The HTTP control API of a proxy (see the crate docs for the reference). CORS is open to any
//! origin, so a test page in headless Chromium can switch faults with `fetch`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::task::JoinHandle;
use tower_http::cors::{Any, CorsLayer};

use crate::faults::Faults;
use crate::proxy::Shared;

pub(crate) async fn serve(at: SocketAddr, shared: Arc<Shared>) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router(shared)).await;
    });
    Ok((addr, task))
}

fn router(shared: Arc<Shared>) -> Router {
    let cors = CorsLayer::new().allow_origin(Any).allow_methods(Any).allow_headers(Any);
    Router::new()
        .route("/faults", get(show).post(set).delete(clear))
        .route("/connections/reset", post(reset))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(cors)
        .with_state(shared)
}

fn state(shared: &Shared) -> serde_json::Value {
    serde_json::json!({
        "faults": shared.faults(),
        "counters": shared.snapshot(),
        "upstreams": shared.upstreams().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    })
}

async fn show(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(state(&shared))
}

/// The body is read as JSON whatever its content type, so a page can send `text/plain`.
async fn set(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            shared.set_faults(faults);
            Json(state(&shared)).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({ "error": "bad_request", "message": e.to_string() });
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

async fn clear(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    shared.set_faults(Faults::none());
    Json(state(&shared))
}

async fn reset(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let n = shared.reset_all();
    Json(serde_json::json!({ "reset": n }))
}
