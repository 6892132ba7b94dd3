//! The HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Readiness;
use crate::runtime::metrics::Metrics;
use crate::runtime::metrics_auth::{MetricsAuth, Verdict};

/// State the endpoints read.
#[derive(Clone)]
pub struct ServerState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Until the watches have listed everything the operator would report
    /// partial metrics, so it is not ready.
    pub readiness: Readiness,
    /// Who may read `/metrics` (`--metrics-auth kubernetes`); anyone when
    /// `None`. `/healthz` and `/readyz` stay open for the kubelet.
    pub auth: Option<Arc<MetricsAuth>>,
}

/// The router of the operator's endpoints.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the endpoints on `addr` until the future is dropped.
pub async fn serve(addr: SocketAddr, state: ServerState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(state)).await
}

async fn metrics(State(state): State<ServerState>, headers: HeaderMap) -> impl IntoResponse {
    if let Some(auth) = &state.auth {
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth.check(header).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Unauthenticated) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a bearer token the API server knows is needed to read /metrics",
                )
                    .into_response();
            }
            Ok(Verdict::Forbidden(user)) => {
                return (
                    StatusCode::FORBIDDEN,
                    format!(
                        "{user} may not get /metrics (grant get on the non-resource URL /metrics, as the chart's ClusterRole <release>-metrics-reader does)"
                    ),
                )
                    .into_response();
            }
            Err(e) => {
                tracing::warn!(error = %e, "/metrics: the token could not be reviewed");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the API server could not review the token",
                )
                    .into_response();
            }
        }
    }
    match state.metrics.render_chunks() {
        // Sent as written: at 10,000 workloads the text is about 9 MiB,
        // never held whole.
        Ok(chunks) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            Body::from_stream(futures::stream::iter(
                chunks.map(Ok::<_, std::convert::Infallible>),
            )),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if let Some((lasted, why)) = state.readiness.api.outage() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the API server has not answered for {}s: {why}",
                lasted.as_secs()
            ),
        );
    }
    let pending = state.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "caches are syncing: {}",
                pending
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}
