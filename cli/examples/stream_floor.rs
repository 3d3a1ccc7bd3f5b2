//! The memory floor of an agent connection: what one HTTP/2 connection carrying one
//! `holdfast.v1` agent stream costs a server built on the same gRPC stack as the coordinator
//! (the same tonic, hyper and h2, the same server settings, codec buffers and allocator
//! setting) that does nothing else with it — no core, no records, no store. Whatever the
//! coordinator spends per agent above this is its own; below it, nothing it does can go.
//!
//! ```text
//! cargo run --release -p holdfast --example stream_floor -- 1000 5000 10000
//! ```
//!
//! For each count the example starts a fresh server (this program again, as a child process,
//! so its memory is its own), opens that many connections to it, each with one agent stream
//! sending a heartbeat every 500 ms, waits `HOLD_S` seconds, reads the server's resident
//! memory, and prints one JSON line; the last line is the cost per connection between the
//! smallest and the largest count.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use holdfast_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use tonic::{Request, Response, Status, Streaming};

/// Seconds of heartbeats before the server's memory is read.
const HOLD_S: u64 = 10;

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

/// Answers each stream with one message, then reads and drops what the agent sends.
struct Floor;

#[tonic::async_trait]
impl AgentService for Floor {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let welcome = futures::stream::once(async { Ok(pb::CoordinatorMessage::default()) });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            welcome,
            futures::stream::pending(),
        ))))
    }
}

/// The server, with the coordinator's HTTP/2 settings (`coordinator/src/server/serve.rs`).
async fn serve() -> anyhow::Result<()> {
    holdfast_coordinator::malloc::map_large_allocations();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(64))
        .http2_max_header_list_size(Some(64 * 1024))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .accept_http1(true)
        .add_service(AgentServiceServer::new(Floor))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// One agent: a connection of its own, one stream, a heartbeat every 500 ms.
async fn agent(addr: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = AgentServiceClient::new(channel);
    let response = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    let mut from_server = response.into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = from_server.message().await {} });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let heartbeat = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                sent_unix_ms: 1,
                ..Default::default()
            })),
        };
        if tx.send(heartbeat).await.is_err() {
            return Ok(());
        }
    }
}

/// Starts `n` agents against `addr` and lets them heartbeat for [`HOLD_S`] seconds.
async fn connect(addr: &str, n: usize) -> tokio::task::JoinSet<anyhow::Result<()>> {
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..n {
        agents.spawn(agent(addr.to_string()));
        // Connections are opened in bursts so the listener's backlog is never overrun.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(HOLD_S)).await;
    agents
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts a server, connects `n` agents, and returns the server's resident and anonymous KB.
async fn measure(n: usize) -> anyhow::Result<(f64, f64)> {
    use tokio::io::AsyncBufReadExt;
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server
        .id()
        .ok_or_else(|| anyhow::anyhow!("the server exited"))?;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no server output"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the server printed no address"))?;
    let mut agents = connect(&addr, n).await;
    if let Some(done) = agents.try_join_next() {
        anyhow::bail!("an agent stopped early: {:?}", done?);
    }
    let rss = status_kb(pid, "VmRSS:").unwrap_or(f64::NAN);
    let anon = status_kb(pid, "RssAnon:").unwrap_or(f64::NAN);
    agents.abort_all();
    server.kill().await?;
    Ok((rss, anon))
}

/// Room for `n` connections' descriptors (both ends are in this process group's limits).
fn raise_file_limit(n: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = n as u64 * 2 + 256;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < wanted {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // The server alone (it prints its address), to run under a heap profiler.
        Some("serve") => return serve().await,
        // Agents alone, against a server started with `serve`: `connect ADDR N`.
        Some("connect") => {
            let (Some(addr), Some(n)) = (args.get(1), args.get(2)) else {
                anyhow::bail!("usage: stream_floor connect ADDR CONNECTIONS");
            };
            let n: usize = n.parse()?;
            raise_file_limit(n);
            connect(addr, n).await;
            return Ok(());
        }
        _ => {}
    }
    let counts: Vec<usize> = if args.is_empty() {
        vec![1000, 5000, 10000]
    } else {
        args.iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("counts of connections, e.g. 1000 10000: {e}"))?
    };
    raise_file_limit(counts.iter().max().copied().unwrap_or(0));
    let mut points = Vec::new();
    for n in counts {
        let (rss, anon) = measure(n).await?;
        println!(
            "{}",
            serde_json::json!({"connections": n, "server_rss_mb": rss / 1024.0, "server_anon_mb": anon / 1024.0})
        );
        points.push((n, rss));
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        if last.0 > first.0 {
            let per = (last.1 - first.1) * 1024.0 / (last.0 - first.0) as f64;
            println!(
                "{}",
                serde_json::json!({"bytes_per_connection": per.round()})
            );
        }
    }
    Ok(())
}
