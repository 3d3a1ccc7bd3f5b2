//! The operator's web face, served on the gRPC port: the dashboard's static assets (embedded in
//! the binary: nothing is fetched or installed at run time) and Prometheus `/metrics`. The
//! dashboard reads the operator API itself with gRPC-web on the same origin, so no CORS is needed.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Coordinator;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// The page's scripts, loaded in this order (they share globals): the wire format and
/// transport, the fleet map and node table, the throughput chart, the rest and the start.
const SCRIPTS: [(&str, &str); 4] = [
    ("/wire.js", include_str!("dashboard/wire.js")),
    ("/fleet.js", include_str!("dashboard/fleet.js")),
    ("/rate.js", include_str!("dashboard/rate.js")),
    ("/app.js", include_str!("dashboard/app.js")),
];
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the dashboard's page may load and do: its own script and styles (the page keeps its
/// styles inline), calls to its own origin, and never inside another site's frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Adds the dashboard and `/metrics` to the router that already serves the gRPC services.
/// The page's responses carry [`CONTENT_SECURITY_POLICY`] and refuse framing, and every
/// request a browser marks with an `Origin` must be same-origin on a host this coordinator
/// answers to ([`browser_guard`]).
pub fn routes(
    coordinator: Coordinator,
    grpc: axum::Router,
    allowed_hosts: &[String],
) -> axum::Router {
    let allowed = std::sync::Arc::new(AllowedHosts::new(allowed_hosts));
    let pages = axum::Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    INDEX_HTML,
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
        );
    let pages = SCRIPTS
        .iter()
        .fold(pages, |pages, &(path, script)| {
            pages.route(
                path,
                get(move || async move {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        script,
                    )
                }),
            )
        })
        .layer(axum::middleware::map_response(security_headers));
    grpc.merge(pages)
        .layer(axum::middleware::from_fn_with_state(allowed, browser_guard))
}

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // The dashboard is opened once with ?token=…: never pass that address on.
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// The host names a browser may reach this coordinator by: IP literals, `localhost`, this
/// host's name, the name of its bootstrapped certificate, and `allowed_hosts`.
#[derive(Debug)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// The built-in names plus `extra`.
    pub fn new(extra: &[String]) -> AllowedHosts {
        let mut names = vec![
            "localhost".to_string(),
            crate::pki::COORDINATOR_NAME.to_string(),
        ];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(host.trim().to_ascii_lowercase());
        }
        names.extend(extra.iter().map(|h| h.trim().to_ascii_lowercase()));
        names.retain(|n| !n.is_empty());
        AllowedHosts { names }
    }

    /// Whether `host` (no port) is one of them.
    pub fn allows(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(bare))
    }
}

/// The host of a `Host` header or of an origin (`scheme://host[:port]`), without the port.
fn host_of(authority: &str) -> &str {
    let authority = authority.rsplit("://").next().unwrap_or(authority);
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Refuses a browser request (one carrying `Origin`) that comes from another site's page, or
/// that reached this port by a name it does not answer to — the mark of DNS rebinding, where
/// another site's name is made to resolve to this coordinator. Agents and the CLI send no
/// `Origin` and pass untouched.
pub async fn browser_guard(
    axum::extract::State(allowed): axum::extract::State<std::sync::Arc<AllowedHosts>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return next.run(request).await;
    };
    let origin = origin.to_str().unwrap_or("").to_string();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_string();
    let origin_authority = origin.rsplit("://").next().unwrap_or("");
    let refusal = if origin_authority.is_empty() || !origin_authority.eq_ignore_ascii_case(&host) {
        Some(format!(
            "cross-origin request refused: a page from {origin:?} may not call this coordinator"
        ))
    } else if !allowed.allows(host_of(&host)) {
        Some(format!(
            "this coordinator does not answer to the name {:?} (add it to allowed_hosts)",
            host_of(&host)
        ))
    } else {
        None
    };
    match refusal {
        None => next.run(request).await,
        Some(reason) => {
            tracing::warn!(origin, host, "browser request refused: {reason}");
            (axum::http::StatusCode::FORBIDDEN, reason).into_response()
        }
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_known_names_or_allowed() {
        let allowed = AllowedHosts::new(&["Coord.Example".into()]);
        for host in [
            "127.0.0.1",
            "10.1.2.3",
            "[::1]",
            "localhost",
            "coord.example",
            "holdfast-coordinator",
        ] {
            assert!(allowed.allows(host), "{host}");
        }
        for host in ["evil.example", "127.0.0.1.evil.example", ""] {
            assert!(!allowed.allows(host), "{host}");
        }
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:7070"), "[::1]");
        assert_eq!(host_of("https://coord.example"), "coord.example");
    }
}
