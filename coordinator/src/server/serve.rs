//! Serving: one port for the agent stream, the operator API over gRPC and gRPC-web, the
//! dashboard and `/metrics`, with operator tokens and TLS when configured.

use std::net::SocketAddr;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::agent_service_server::AgentServiceServer;
use pb::join_service_server::JoinServiceServer;
use pb::operator_service_server::OperatorServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use holdfast_core::cluster::Command;

use super::Coordinator;

/// Largest gRPC message the coordinator decodes; larger ones are refused unread
/// (`out_of_range`/`resource_exhausted` from tonic).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Most concurrent HTTP/2 streams on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Most connections open at once (agents hold one each, operators a few): room for 10,000
/// agents and their reconnects, below the file descriptors the installed unit allows (65,536).
pub const MAX_CONNECTIONS: usize = 32_768;
/// Largest header list a request may send (the default would allow 16 MiB).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
use crate::config::CoordinatorConfig;
use crate::store::{RecordStore, StoreError};

/// Why the coordinator stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokenFileError),
    #[error(transparent)]
    TlsFile(#[from] crate::tls::TlsFileError),
    #[error("TLS settings (tls_cert_file, tls_key_file, tls_client_ca_file): {0}")]
    Tls(tonic::transport::Error),
}

/// Serves the agent stream and the operator API (gRPC and gRPC-web), the dashboard and
/// `/metrics` on `listener` until `shutdown` resolves, keeping the state in memory only.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let coordinator = Coordinator::new(config);
    serve(coordinator, Vec::new(), listener, shutdown).await
}

/// [`run`] with the state in `store`: restored on start, saved on every durable change.
pub async fn run_with_store(
    listener: TcpListener,
    config: CoordinatorConfig,
    store: Box<dyn RecordStore>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (coordinator, effects) = Coordinator::open(config, store)?;
    serve(coordinator, effects, listener, shutdown).await
}

async fn serve(
    coordinator: Coordinator,
    effects: Vec<Command>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Read before anything runs: a bad token file stops the start, naming its line.
    let tokens_file = coordinator.cluster().config().operator_tokens_file.clone();
    let tokens = if tokens_file.as_os_str().is_empty() {
        tracing::warn!(
            "operator_tokens_file is not set: the operator API is open to anyone who can reach \
             this port"
        );
        None
    } else {
        Some(std::sync::Arc::new(crate::auth::OperatorTokens::load(
            &tokens_file,
        )?))
    };
    let tls = crate::tls::server_config(coordinator.cluster().config())?;
    let tick = Duration::from_millis(coordinator.cluster().config().tick_ms);
    coordinator.carry_out(effects);
    coordinator.spawn_inbox();
    coordinator.spawn_ticker(tick);
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "coordinator serving");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let incoming = TcpListenerStream::new(listener).filter_map(move |s| match s {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            // Over the cap a connection is closed at once: a flood of them cannot take the
            // file descriptors the fleet's agents need.
            match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(Ok(Counted {
                    stream: s,
                    _slot: slot,
                })),
                Err(_) => {
                    tracing::warn!(
                        peer = ?s.peer_addr().ok(),
                        "connection refused: {MAX_CONNECTIONS} connections open already"
                    );
                    None
                }
            }
        }
        Err(e) => Some(Err(e)),
    });
    // Every message's size is bounded before it is decoded: the largest legitimate one (a job
    // spec at its limits, a hello with 64 GPUs) is far below it.
    let mut grpc = tonic::service::Routes::new(
        AgentServiceServer::new(coordinator.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        JoinServiceServer::new(super::join::Joins::new(coordinator.cluster().config()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        OperatorServiceServer::new(coordinator.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .into_axum_router();
    // Tokens guard the operator API only (`enforce` passes other paths through): agents are not
    // operators and never send one.
    if let Some(tokens) = tokens {
        grpc = grpc.route_layer(axum::middleware::from_fn_with_state(
            tokens,
            crate::auth::enforce,
        ));
    }
    let grpc = grpc
        // Only the gRPC routes speak gRPC-web: the layer refuses plain HTTP/1 requests, which the
        // dashboard's page and /metrics are.
        .layer(tonic_web::GrpcWebLayer::new());
    let deposed = coordinator.clone();
    let allowed_hosts = coordinator.cluster().config().allowed_hosts.clone();
    let routes = crate::dashboard::routes(coordinator, grpc, &allowed_hosts);
    // HTTP/1.1 for browsers: gRPC-web (the dashboard's API calls), the page and /metrics.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(ServeError::Tls)?;
    }
    server
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // An agent holds one stream and an operator a few; more on one connection is a flood.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        // A connection that never finishes its handshake is closed.
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .accept_http1(true)
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = deposed.shared.deposed.notified() => {
                    tracing::error!("another coordinator leads: no longer serving");
                }
            }
        })
        .await?;
    Ok(())
}

/// An accepted connection holding one of the [`MAX_CONNECTIONS`] slots until it closes.
struct Counted {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
