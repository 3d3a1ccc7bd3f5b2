//! The coordinator's one port serves gRPC, gRPC-web, the dashboard and `/metrics` (real sockets,
//! HTTP/1.1 written by hand so the test checks the wire format a browser sees).

use std::io::{Read, Write};
use std::time::Duration;

use holdfast_coordinator::CoordinatorConfig;
use holdfast_proto::v1 as pb;
use prost::Message;

/// One HTTP/1.1 request; returns (status line, lower-cased headers, body bytes).
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (String, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if head.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head.lines().next().unwrap_or("").to_string();
    (status, head.to_lowercase(), body)
}

/// GET `path`: answered 200 with a content type that holds `content_type`; the body as text.
fn get(addr: std::net::SocketAddr, path: &str, content_type: &str) -> String {
    let (status, headers, body) = http(addr, "GET", path, &[], b"");
    assert!(
        status.contains("200") && headers.contains(content_type),
        "{path}: {status} {headers}"
    );
    String::from_utf8(body).unwrap()
}

/// A gRPC-web call of the operator service's `method` with an empty request message (one data
/// frame of length 0), as the dashboard makes it.
fn grpc_web(addr: std::net::SocketAddr, method: &str) -> (String, String, Vec<u8>) {
    let path = format!("/holdfast.v1.OperatorService/{method}");
    let headers = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    http(addr, "POST", &path, &headers, &[0, 0, 0, 0, 0])
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// A coordinator with the default settings on a loopback port: its address, the sender that
/// stops it, and its task.
async fn start() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), holdfast_coordinator::server::ServeError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(holdfast_coordinator::run(
        listener,
        CoordinatorConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, server)
}

/// A plain gRPC (HTTP/2) operator client of the coordinator at `addr`.
async fn operator(
    addr: std::net::SocketAddr,
) -> pb::operator_service_client::OperatorServiceClient<tonic::transport::Channel> {
    let url = format!("http://{addr}");
    pb::operator_service_client::OperatorServiceClient::connect(url)
        .await
        .unwrap()
}

/// The operator API refuses what the core cannot judge alone: a checkpoint URI whose store the
/// coordinator cannot open is refused at submit, naming the field, and nothing is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_uri_of_an_unknown_store_is_refused_naming_the_field() {
    let (addr, stop, server) = start().await;
    let mut client = operator(addr).await;
    let refused = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                command: vec!["true".into()],
                nodes: 1,
                checkpoint_uri: "ftp://x/y".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("an ftp:// checkpoint URI is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("checkpoint_uri"),
        "the refusal names the field: {}",
        refused.message()
    );
    let jobs = client.list_jobs(pb::ListJobsRequest {}).await.unwrap();
    assert!(jobs.into_inner().jobs.is_empty(), "nothing was accepted");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_grpc_web_dashboard_and_metrics() {
    let (addr, stop, server) = start().await;

    // Plain gRPC (HTTP/2) still works beside the rest.
    let mut grpc = operator(addr).await;
    assert!(grpc
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes
        .is_empty());

    let result = tokio::task::spawn_blocking(move || {
        // gRPC-web: one data frame in, a data frame and a trailers frame out.
        let (status, headers, body) = grpc_web(addr, "ListJobs");
        assert!(status.contains("200"), "{status}");
        assert!(
            headers.contains("content-type: application/grpc-web+proto"),
            "{headers}"
        );
        assert_eq!(body[0], 0, "a data frame first");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let jobs = pb::ListJobsResponse::decode(&body[5..5 + len]).unwrap();
        assert!(jobs.jobs.is_empty());
        let trailers = &body[5 + len..];
        assert_eq!(trailers[0], 0x80, "then a trailers frame");
        assert!(String::from_utf8_lossy(&trailers[5..]).contains("grpc-status:0"));

        // An error comes back as a gRPC status, not an HTTP error.
        let (status, headers, body) = grpc_web(addr, "GetJob");
        assert!(status.contains("200"), "{status}");
        let all = format!("{headers}{}", String::from_utf8_lossy(&body));
        assert!(
            all.contains("grpc-status: 5") || all.contains("grpc-status:5"),
            "NOT_FOUND expected: {all}"
        );

        // The dashboard and its assets, embedded.
        let page = get(addr, "/", "text/html");
        assert!(!page.contains("https://"), "same-origin assets only");
        for script in ["/wire.js", "/fleet.js", "/rate.js", "/app.js"] {
            assert!(page.contains(script), "the page loads {script}");
            assert!(
                !get(addr, script, "javascript").contains("https://"),
                "{script}"
            );
        }
        assert!(get(addr, "/wire.js", "javascript").contains("/holdfast.v1.OperatorService/"));
        get(addr, "/favicon.svg", "");

        // Prometheus.
        let metrics = get(addr, "/metrics", "text/plain; version=0.0.4");
        assert!(
            metrics.contains("holdfast_nodes{state=\"ready\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE holdfast_incident_phase_seconds histogram"),
            "{metrics}"
        );
    })
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[test]
fn the_shipped_scrape_config_scrapes_the_coordinator_port() {
    let scrape = include_str!("../../deploy/prometheus/holdfast.yml");
    assert!(scrape.contains("job_name: holdfast-coordinator"));
    // 7070 is the coordinator's default listen port (`holdfast coordinator --listen`).
    assert!(scrape.contains(":7070\""), "{scrape}");
}
