//! The operator's web face, served on the gRPC port: the dashboard's static assets (embedded in
//! the binary: nothing is fetched or installed at run time) and Prometheus `/metrics`. The
//! dashboard reads the operator API itself with gRPC-web on the same origin, so no CORS is needed.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Coordinator;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Adds the dashboard and `/metrics` to the router that already serves the gRPC services.
pub fn routes(coordinator: Coordinator, grpc: axum::Router) -> axum::Router {
    grpc.route(
        "/",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                INDEX_HTML,
            )
        }),
    )
    .route(
        "/app.js",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                APP_JS,
            )
        }),
    )
    .route(
        "/favicon.svg",
        get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], FAVICON_SVG) }),
    )
    .route(
        "/metrics",
        get(move || {
            let coordinator = coordinator.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                    coordinator.metrics_text(),
                )
                    .into_response()
            }
        }),
    )
}
