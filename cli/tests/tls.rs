//! TLS end to end with certificates made at test time: a coordinator serving TLS with a client
//! CA, an agent that presents its certificate (mutual TLS) and registers, an agent stream
//! without a certificate refused, the operator API over TLS with a token (library and CLI), and
//! a plain-TCP client that cannot talk to the TLS port, and an unreadable certificate refused at
//! start; a node's certificate speaks for that node only.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use holdfast_cli::client::{connect_with, connect_with_token};
use holdfast_cli::demo::LocalCluster;
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};

const OPERATOR: &str = "operator-0123456789abcdef";

/// Writes `ca.pem`, `coordinator.{pem,key}` (for localhost and 127.0.0.1) and
/// `agent.{pem,key}`, all signed by the one CA, into `dir`.
fn make_certificates(dir: &Path) {
    kit::certificates(
        dir,
        &[
            ("coordinator", &["localhost", "127.0.0.1"]),
            ("agent", &["node-1"]),
            ("node-a", &["node-a"]),
        ],
    );
}

#[tokio::test]
async fn agents_need_client_certificates_and_operators_use_tls_with_tokens() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("tls");
    make_certificates(&dir);
    let p = |name: &str| dir.join(name).display().to_string();
    let tokens = kit::write_file(&dir, "tokens", &format!("operator {OPERATOR}\n"));
    // The config file of `party`, whose certificate and key are `<party>.pem` and `.key`: the
    // CA under `ca_key`, and one more setting.
    let config = |party: &str, ca_key: &str, (key, value): (&str, &str)| {
        let d = dir.display();
        let toml = format!(
            "{key} = \"{value}\"\n{ca_key} = \"{d}/ca.pem\"\n\
             tls_cert_file = \"{d}/{party}.pem\"\ntls_key_file = \"{d}/{party}.key\"\n"
        );
        kit::write_file(&dir, &format!("{party}.toml"), &toml)
    };
    let config_arg = config(
        "coordinator",
        "tls_client_ca_file",
        ("operator_tokens_file", &tokens),
    );
    let mut cluster = LocalCluster::start(exe, &dir, &["--config", &config_arg])
        .await
        .unwrap();
    let https = cluster.use_https();
    let port = https.rsplit(':').next().unwrap().to_string();
    let agent_arg = config("agent", "tls_ca_file", ("coordinator", &https));
    cluster
        .start_agent("node-1", "worker", &["--config", &agent_arg])
        .unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();

    // The operator API over TLS, with a token: the agent registered over mutual TLS.
    let operator = connect_with(&https, Some(OPERATOR), Some(&ca))
        .await
        .unwrap();
    // Not ready over mutual TLS? See node-1.log in the kept directory.
    kit::wait_node_ready(&operator, "node-1", Duration::from_secs(20)).await;

    // An agent stream over TLS but without a client certificate is refused.
    let channel = tonic::transport::Endpoint::from_shared(https.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous_agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let err = anonymous_agent
        .session(tokio_stream::iter(Vec::<pb::AgentMessage>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{err:?}");

    // Plain TCP to the TLS port gets nowhere.
    let plain = match connect_with_token(&format!("http://127.0.0.1:{port}"), Some(OPERATOR)).await
    {
        Ok(mut c) => c.list_nodes(pb::ListNodesRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "plain TCP must not reach a TLS coordinator");

    // The CLI: https:// with --ca-cert and --token; without the CA it says what is missing.
    let run = |args: &[&str]| {
        kit::run(
            Command::new(exe)
                .args(args)
                .env("HOLDFAST_COORDINATOR", &https)
                .env_remove("HOLDFAST_TOKEN")
                .env_remove("HOLDFAST_CA_CERT"),
        )
    };
    let ca_path = p("ca.pem");
    let out = run(&["nodes", "--ca-cert", &ca_path, "--token", OPERATOR]);
    assert!(
        out.ok() && out.stdout.contains("node-1"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = run(&["nodes", "--token", OPERATOR]);
    assert!(
        !out.ok() && out.stderr.contains("--ca-cert"),
        "{}",
        out.stderr
    );
    drop(cluster);

    // A certificate file that cannot be read stops the coordinator at start, naming the key.
    let missing = dir.join("missing.toml");
    std::fs::write(
        &missing,
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            p("no-such.pem"),
            p("coordinator.key")
        ),
    )
    .unwrap();
    let out = kit::run(
        Command::new(exe)
            .args(["coordinator", "--ephemeral", "--listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&missing),
    );
    assert!(!out.ok());
    assert!(
        out.stderr.contains("tls_cert_file") && out.stderr.contains("no-such.pem"),
        "{}",
        out.stderr
    );
}

/// A raw agent stream from `cert`/`key` (files in `dir`) saying hello as `node_id`: the first
/// reply, or the refusal.
async fn hello_as(
    dir: &Path,
    addr: &str,
    cert: &str,
    node_id: &str,
) -> Result<pb::CoordinatorMessage, tonic::Status> {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
        .identity(tonic::transport::Identity::from_pem(
            read(&format!("{cert}.pem")),
            read(&format!("{cert}.key")),
        ));
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let now = holdfast_coordinator::now_ms();
    let hello = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            node_id: node_id.into(),
            hostname: node_id.into(),
            boot_id: "boot".into(),
            sent_unix_ms: now,
            agent_started_unix_ms: now,
            ..Default::default()
        })),
    };
    // The stream stays open (the sender lives in the spawned task) so a welcome can come back.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.unwrap();
    tokio::spawn(async move {
        tx.closed().await;
    });
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(inbound.message().await?.expect("a first message"))
}

#[tokio::test]
async fn a_node_certificate_speaks_for_its_own_node_only() {
    let dir = Scratch::new("tls-identity");
    make_certificates(&dir);
    let config = holdfast_coordinator::CoordinatorConfig {
        tls_cert_file: dir.join("coordinator.pem"),
        tls_key_file: dir.join("coordinator.key"),
        tls_client_ca_file: dir.join("ca.pem"),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(holdfast_coordinator::run(
        listener,
        config,
        std::future::pending(),
    ));

    // node-a's certificate claiming node-b is refused, naming both.
    let err = hello_as(&dir, &addr, "node-a", "node-b").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("node-b") && err.message().contains("node-a"),
        "{err:?}"
    );
    // With its own id it is welcomed.
    let welcome = hello_as(&dir, &addr, "node-a", "node-a").await.unwrap();
    assert!(
        matches!(welcome.body, Some(pb::coordinator_message::Body::Welcome(ref w)) if w.node_id == "node-a"),
        "{welcome:?}"
    );
}
