//! Bounded inputs over a real socket: a raw gRPC client sends what no agent would — a 3 MB node
//! id, a node id with a shell in it, garbage bytes, a flood of health checks, an extreme clock —
//! and each is refused with a clear status while the coordinator keeps serving.

use std::time::Duration;

use holdfast_coordinator::CoordinatorConfig;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;
use pb::agent_service_client::AgentServiceClient;
use pb::operator_service_client::OperatorServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A coordinator in this process on a free loopback port; its address.
async fn coordinator() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(holdfast_coordinator::run(
        listener,
        CoordinatorConfig::default(),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

use holdfast_testkit::raw_grpc::hello;

/// Opens an agent stream that sends `messages` and keeps it open; the first reply or the
/// refusal.
async fn session(
    addr: &str,
    messages: Vec<pb::AgentMessage>,
) -> (
    Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status>,
    mpsc::Sender<pb::AgentMessage>,
) {
    let mut client = AgentServiceClient::connect(addr.to_string()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let reply = client
        .session(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (reply, tx)
}

/// Reads the coordinator's replies until it closes the stream; the status it closed with.
async fn closing_status(
    replies: &mut tonic::Streaming<pb::CoordinatorMessage>,
    within: Duration,
) -> tonic::Status {
    let end = tokio::time::timeout(within, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream is closed in time");
    end.expect_err("the stream ends with an error status")
}

async fn node_ids(addr: &str) -> Vec<String> {
    let mut operator = OperatorServiceClient::connect(addr.to_string())
        .await
        .unwrap();
    let nodes = operator
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    nodes.into_iter().map(|n| n.node_id).collect()
}

#[tokio::test]
async fn hostile_agent_input_is_refused_naming_the_field() {
    let addr = coordinator().await;

    // A 3 MB node id is too large a message to be read at all.
    let (reply, _tx) = session(&addr, vec![hello(&"x".repeat(3 << 20))]).await;
    let err = reply.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );

    // Under the message limit, the field limits name the field.
    for bad in [&"x".repeat(200)[..], "node; reboot", "", "../etc"] {
        let (reply, _tx) = session(&addr, vec![hello(bad)]).await;
        let err = reply.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("hello.node_id"), "{err:?}");
        assert!(
            err.message().len() < 300,
            "the refusal does not echo the input"
        );
    }
    let mut long_host = hello("node-h");
    if let Some(ToCoordinator::Hello(h)) = &mut long_host.body {
        h.hostname = "h".repeat(100_000);
    }
    let err = session(&addr, vec![long_host]).await.0.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello.hostname"), "{err:?}");
    let mut skewed = hello("node-t");
    if let Some(ToCoordinator::Hello(h)) = &mut skewed.body {
        h.sent_unix_ms = i64::MIN;
    }
    let err = session(&addr, vec![skewed]).await.0.unwrap_err();
    assert!(err.message().contains("hello.sent_unix_ms"), "{err:?}");

    // Garbage on the wire: a gRPC frame that is not an AgentMessage.
    let garbage = garbage_is_refused(&addr).await;
    assert!(garbage, "garbage must be refused, not accepted");

    // A welcomed agent that then sends a flood of health checks is cut off with the field.
    let (reply, tx) = session(&addr, vec![hello("node-ok")]).await;
    let mut inbound = reply.unwrap();
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.body,
        Some(pb::coordinator_message::Body::Welcome(_))
    ));
    let check = pb::HealthCheck {
        check: "c".into(),
        ..Default::default()
    };
    tx.send(pb::AgentMessage {
        body: Some(ToCoordinator::Heartbeat(pb::Heartbeat {
            seq: 1,
            sent_unix_ms: holdfast_coordinator::now_ms(),
            health: Some(pb::HealthSummary {
                state: 0,
                checks: vec![check; 10_000],
            }),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let err = closing_status(&mut inbound, Duration::from_secs(10)).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("health.checks"), "{err:?}");

    // Nothing hostile was stored, and the coordinator still serves.
    assert_eq!(node_ids(&addr).await, ["node-ok"]);

    // A job spec over the limits is refused naming the field.
    let mut operator = OperatorServiceClient::connect(addr.clone()).await.unwrap();
    let err = operator
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                job_id: "j; rm -rf /".into(),
                command: vec!["true".into()],
                nodes: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("job_id"), "{err:?}");
}

/// Sends a gRPC frame of random bytes as an agent session over raw HTTP/2; true when the
/// coordinator answered with an error status.
async fn garbage_is_refused(addr: &str) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/holdfast.v1.AgentService/Session");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let reply = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([tonic::codegen::Bytes::from(garbage)])),
            path,
            holdfast_testkit::raw_grpc::RawCodec,
        )
        .await;
    match reply {
        Err(status) => status.code() != tonic::Code::Ok,
        Ok(mut stream) => stream.get_mut().message().await.is_err(),
    }
}

#[tokio::test]
async fn an_agent_that_floods_its_stream_is_cut_off_while_others_keep_their_heartbeats() {
    let addr = coordinator().await;
    let (reply, steady) = session(&addr, vec![hello("node-steady")]).await;
    let mut steady_replies = reply.unwrap();
    steady_replies.message().await.unwrap().expect("a welcome");

    let (reply, flood) = session(&addr, vec![hello("node-flood")]).await;
    let mut replies = reply.unwrap();
    replies.message().await.unwrap().expect("a welcome");
    let heartbeat = || pb::AgentMessage {
        body: Some(ToCoordinator::Heartbeat(pb::Heartbeat {
            sent_unix_ms: holdfast_coordinator::now_ms(),
            ..Default::default()
        })),
    };
    // Far past the burst, as fast as the socket takes them.
    let sender = tokio::spawn(async move {
        for _ in 0..(holdfast_coordinator::server::MESSAGE_BURST * 3) {
            if flood.send(heartbeat()).await.is_err() {
                break;
            }
        }
    });
    let err = closing_status(&mut replies, Duration::from_secs(30)).await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("messages per second"), "{err:?}");
    sender.abort();
    // The steady agent was not touched and the coordinator still serves.
    steady.send(heartbeat()).await.unwrap();
    assert!(node_ids(&addr).await.contains(&"node-steady".to_string()));
}
