//! Admission control over real sockets and processes: a coordinator that admits 2 hellos a
//! second (burst 1) answers a burst of hellos beyond that with `unavailable` and a retry-after,
//! and real agents started all at once, refused the same way, come back when told and all end
//! up registered.

use std::time::Duration;

use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};
use pb::agent_message::Body as ToCoordinator;
use pb::agent_service_client::AgentServiceClient;
use tokio_stream::wrappers::ReceiverStream;

const AGENTS: usize = 5;

/// Says hello on a stream of its own; the refusal, if any.
async fn hello(addr: &str, node: &str) -> Result<(), tonic::Status> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut client = AgentServiceClient::connect(url).await.expect("connects");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let now = holdfast_coordinator::now_ms();
    tx.send(pb::AgentMessage {
        body: Some(ToCoordinator::Hello(pb::Hello {
            node_id: node.into(),
            hostname: node.into(),
            boot_id: "boot".into(),
            sent_unix_ms: now,
            agent_started_unix_ms: now,
            ..Default::default()
        })),
    })
    .await
    .expect("queued");
    client.session(ReceiverStream::new(rx)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_admission_rate_is_told_to_retry_and_every_agent_registers() {
    let dir = Scratch::new("admission");
    let config = kit::write_file(
        &dir,
        "coordinator.toml",
        // No hold: every hello beyond the rate is refused at once (the hold is tested below).
        "hello_rate_per_s = 2\nhello_burst = 1\nhello_hold_ms = 0\n",
    );
    let mut cluster = LocalCluster::start(holdfast_exe!(), dir.path(), &["--config", &config])
        .await
        .expect("coordinator started");

    // Four hellos at once: one is admitted, the rest are refused with a retry-after.
    let addr = cluster.addr.clone();
    let burst: Vec<_> = (0..4)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move { hello(&addr, &format!("raw-{i}")).await })
        })
        .collect();
    let mut refused = Vec::new();
    for call in burst {
        if let Err(status) = call.await.expect("the call ran") {
            refused.push(status);
        }
    }
    assert!(refused.len() >= 2, "{refused:?}");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("retry after"), "{status:?}");
        let after = holdfast_agent::backoff::retry_after(status).expect("a retry-after");
        assert!(
            after >= Duration::from_millis(200) && after <= Duration::from_secs(60),
            "{after:?}"
        );
    }

    // Real agents, all at once: refused too, they wait their turn and all register.
    let names: Vec<String> = (0..AGENTS).map(|i| format!("node-{i}")).collect();
    for name in &names {
        cluster
            .start_agent(name, "worker", &[])
            .expect("agent started");
    }
    let client = cluster.client().await.expect("operator client");
    kit::wait_for(Duration::from_secs(60), || {
        let mut client = client.clone();
        let names = names.clone();
        async move {
            let nodes = client
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .nodes;
            let ready = nodes
                .iter()
                .filter(|n| names.contains(&n.node_id))
                .filter(|n| n.connected && n.node_state() == pb::NodeState::Ready)
                .count();
            kit::check(ready == AGENTS, || {
                format!("{ready} of {AGENTS} agents ready")
            })
        }
    })
    .await;
    let refused_agents = names
        .iter()
        .filter(|n| {
            std::fs::read_to_string(dir.join(format!("{n}.log")))
                .is_ok_and(|log| log.contains("refused the session for now"))
        })
        .count();
    assert!(
        refused_agents >= 1,
        "no agent was refused: the burst fit the rate"
    );
    // Nothing the wait did counts against a node.
    let nodes = kit::client_nodes(&client).await;
    assert!(
        nodes
            .iter()
            .filter(|n| names.contains(&n.node_id))
            .all(|n| n.node_state() == pb::NodeState::Ready),
        "{nodes:?}"
    );
}

/// A hello whose turn comes within `hello_hold_ms` waits for it on its open stream and is then
/// welcomed, one turn after another, never before its turn; one whose turn is further back is
/// refused with a retry-after, as without the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_whose_turn_is_near_waits_for_it_on_its_stream() {
    let dir = Scratch::new("admission-hold");
    // A turn every 500 ms, held up to 1.2 s: a burst of hellos faster than that builds a line
    // longer than the hold.
    let config = kit::write_file(
        &dir,
        "coordinator.toml",
        "hello_rate_per_s = 2\nhello_burst = 1\nhello_hold_ms = 1200\n",
    );
    let cluster = LocalCluster::start(holdfast_exe!(), dir.path(), &["--config", &config])
        .await
        .expect("coordinator started");
    let start = std::time::Instant::now();
    // Spawned all at once (collected before any is awaited).
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let addr = cluster.addr.clone();
            tokio::spawn(async move {
                let result = hello(&addr, &format!("held-{i}")).await;
                (result, start.elapsed())
            })
        })
        .collect();
    let mut welcomed = Vec::new();
    let mut refused = Vec::new();
    for call in burst {
        match call.await.expect("the call ran") {
            (Ok(()), after) => welcomed.push(after),
            (Err(status), _) => refused.push(status),
        }
    }
    welcomed.sort();
    let report = format!("welcomed at {welcomed:?}, refused {refused:?}");
    // Held rather than refused: more than the burst's one token was welcomed...
    assert!(welcomed.len() >= 2, "{report}");
    // ...each at its own turn, one slot after the one before.
    for pair in welcomed.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(400), "{report}");
    }
    // The line grew past the hold: the rest were told when to come back.
    assert!(!refused.is_empty(), "{report}");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let after = holdfast_agent::backoff::retry_after(status).expect("a retry-after");
        assert!(after >= Duration::from_millis(200), "{after:?}");
    }
}
