//! Secure by default, with real processes on loopback: a coordinator given a PKI directory
//! bootstraps a cluster CA, a serving certificate, an admin token and a join token (0600
//! files); an agent joins with the token over TLS pinned to the CA's hash and then speaks
//! mutual TLS; a wrong hash, a bad, expired or revoked token, and a second certificate for a
//! live node id are refused; a revoked certificate is refused on the agent stream; a joined
//! agent renews its (here short-lived) certificate over mutual TLS until it is revoked. Without
//! authentication the coordinator serves loopback only unless `--insecure`, and the agent
//! refuses plain http:// to another host.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use holdfast_cli::client::connect_with;
use holdfast_cli::demo::LocalCluster;
use holdfast_testkit::{self as kit, holdfast_exe, Scratch};

const WITHIN: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The join token and CA hash the coordinator printed on its first start.
fn printed_join(log: &str) -> (String, String) {
    let line = log
        .lines()
        .find(|l| l.contains("--join ") && l.contains("--ca-hash "))
        .unwrap_or_else(|| panic!("no join command printed:\n{log}"));
    let after = |flag: &str| {
        line.split(flag)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    (after("--join "), after("--ca-hash "))
}

/// What a first start left for the operator: the join token and CA hash it printed (in
/// `dir/coordinator.log`), the admin token and the CA's PEM (in `pki`).
struct FirstStart {
    token: String,
    hash: String,
    admin: String,
    ca: Vec<u8>,
}

fn first_start(dir: &Path, pki: &Path) -> FirstStart {
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap();
    let (token, hash) = printed_join(&log);
    let admin = std::fs::read_to_string(pki.join("admin.token")).unwrap();
    FirstStart {
        token,
        hash,
        admin: admin.trim().to_string(),
        ca: std::fs::read(pki.join("ca.pem")).unwrap(),
    }
}

/// Runs `holdfast agent` to its end (it exits when the join fails).
fn agent_join(
    exe: &Path,
    https: &str,
    node: &str,
    state: &Path,
    token: &str,
    hash: &str,
) -> kit::Ran {
    kit::run(
        Command::new(exe)
            .args([
                "agent",
                "--coordinator",
                https,
                "--node-id",
                node,
                "--state-dir",
            ])
            .arg(state)
            .args(["--join", token, "--ca-hash", hash])
            .env_remove("HOLDFAST_JOIN_TOKEN")
            .env_remove("HOLDFAST_CA_HASH"),
    )
}

#[tokio::test]
async fn agents_join_with_a_token_pinned_to_the_cluster_ca() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-join");
    let pki = dir.join("pki");
    let pki_arg = pki.display().to_string();
    let mut cluster = LocalCluster::start(exe, &dir, &["--pki-dir", &pki_arg])
        .await
        .unwrap();
    let https = cluster.use_https();

    // First start: every file private, the directory too; the join command printed once.
    for file in holdfast_coordinator::pki::FIRST_START_FILES {
        assert_eq!(mode(&pki.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&pki), 0o700);
    let FirstStart {
        token,
        hash,
        admin,
        ca,
    } = first_start(&dir, &pki);

    // The operator API wants the admin token now.
    let anonymous = connect_with(&https, None, Some(&ca)).await.unwrap();
    let err = anonymous
        .clone()
        .list_nodes(holdfast_proto::v1::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let operator = connect_with(&https, Some(&admin), Some(&ca)).await.unwrap();

    // A wrong hash: the agent never sends its token and says why.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = agent_join(exe, &https, "node-x", &dir.join("x"), &token, &wrong);
    assert!(
        !out.ok() && out.stderr.contains("no CA with hash"),
        "{}",
        out.stderr
    );
    // A bad token is refused by the coordinator.
    let (id, _) = token.split_once('.').unwrap();
    let bad = format!("{id}.0000000000000000");
    let out = agent_join(exe, &https, "node-x", &dir.join("x"), &bad, &hash);
    assert!(
        !out.ok() && out.stderr.contains("join token is not valid"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.join("x/pki/node.pem").exists(),
        "nothing kept from a refused join"
    );

    // The right token and hash: the agent joins, keeps its key private and becomes ready
    // over mutual TLS.
    cluster
        .start_agent("node-1", "worker", &["--join", &token, "--ca-hash", &hash])
        .unwrap();
    kit::wait_node_ready(&operator, "node-1", WITHIN).await;
    let node_key = cluster.state_dir("node-1").join("pki/node.key");
    assert_eq!(mode(&node_key), 0o600);

    // Someone else with a valid token cannot get a certificate for the same node id.
    let out = agent_join(exe, &https, "node-1", &dir.join("thief"), &token, &hash);
    assert!(
        !out.ok() && out.stderr.contains("already has a certificate"),
        "{}",
        out.stderr
    );

    // Tokens made and revoked from the command line count at once; an expired one never does.
    let cli = |args: &[&str]| {
        kit::run(
            Command::new(exe)
                .args(args)
                .args(["--pki-dir", &pki_arg])
                .env_remove("HOLDFAST_PKI_DIR"),
        )
    };
    let made = cli(&["token", "create", "--ttl", "1h", "--description", "rack 7"]);
    assert!(made.ok(), "{}", made.stderr);
    let second = made.stdout.trim().to_string();
    assert!(
        made.stderr.contains(&hash),
        "the join command names the CA hash: {}",
        made.stderr
    );
    let listed = cli(&["token", "list"]);
    assert!(
        listed.ok() && listed.stdout.contains("rack 7"),
        "{}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains(second.split_once('.').unwrap().1),
        "secrets are never listed"
    );
    cluster
        .start_agent("node-3", "spare", &["--join", &second, "--ca-hash", &hash])
        .unwrap();
    kit::wait_node_ready(&operator, "node-3", WITHIN).await;
    let second_id = second.split_once('.').unwrap().0.to_string();
    assert!(cli(&["token", "revoke", &second_id]).ok());
    let out = agent_join(exe, &https, "node-4", &dir.join("n4"), &second, &hash);
    assert!(
        !out.ok() && out.stderr.contains("join token is not valid"),
        "{}",
        out.stderr
    );

    // A revoked certificate is refused on the agent stream from the next connection on.
    let revoked = cli(&["cert", "revoke", "node-1"]);
    assert!(revoked.ok(), "{}", revoked.stderr);
    let listed = cli(&["cert", "list"]);
    assert!(listed.stdout.contains("revoked"), "{}", listed.stdout);
    cluster.kill_agent("node-1").unwrap();
    cluster.start_agent("node-1", "worker", &[]).unwrap();
    kit::wait_for(WITHIN, || async {
        let log = std::fs::read_to_string(dir.join("node-1.log")).unwrap_or_default();
        kit::check(log.contains("was revoked"), || {
            "the agent was not told its certificate was revoked".into()
        })
    })
    .await;
}

#[test]
fn without_authentication_only_loopback_is_served_unless_insecure() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-protected");
    let out = kit::run(
        Command::new(exe)
            .args(["coordinator", "--ephemeral", "--listen", "0.0.0.0:0"])
            .env("HOLDFAST_LOG", "warn"),
    );
    assert!(
        !out.ok(),
        "an open coordinator on every address must not start"
    );
    assert!(
        out.stderr.contains("--pki-dir") && out.stderr.contains("--insecure"),
        "{}",
        out.stderr
    );

    // --insecure starts it, with a warning that says what is open.
    let addr_file = dir.join("addr");
    let mut child = kit::KillOnDrop(
        Command::new(exe)
            .args([
                "coordinator",
                "--ephemeral",
                "--insecure",
                "--listen",
                "0.0.0.0:0",
                "--addr-file",
            ])
            .arg(&addr_file)
            .stderr(std::fs::File::create(dir.join("insecure.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    kit::wait_for_blocking(WITHIN, || {
        kit::check(addr_file.exists(), || {
            "the --insecure coordinator did not listen".into()
        })
    });
    let log = std::fs::read_to_string(dir.join("insecure.log")).unwrap();
    assert!(log.contains("--insecure") && log.contains("root"), "{log}");
    let _ = child.0.kill();

    // The agent: plain http:// to another host is refused unless --insecure.
    let out = kit::run(
        Command::new(exe)
            .args([
                "agent",
                "--coordinator",
                "http://192.0.2.1:7070",
                "--node-id",
                "n1",
                "--state-dir",
            ])
            .arg(dir.join("agent")),
    );
    assert!(!out.ok());
    assert!(
        out.stderr.contains("coordinator") && out.stderr.contains("insecure"),
        "{}",
        out.stderr
    );
    // https:// without having joined says how to join.
    let out = kit::run(
        Command::new(exe)
            .args([
                "agent",
                "--coordinator",
                "https://192.0.2.1:7070",
                "--node-id",
                "n1",
                "--state-dir",
            ])
            .arg(dir.join("agent")),
    );
    assert!(!out.ok() && out.stderr.contains("--join"), "{}", out.stderr);
}

#[test]
fn a_hostile_host_name_never_reaches_a_shell_through_the_shipped_fence_scripts() {
    let dir = Scratch::new("security-fence");
    let pwned = dir.join("pwned");
    let out_file = dir.join("fenced-host");
    let hostile = [
        format!("x$(touch {})", pwned.display()),
        format!("x;touch {}", pwned.display()),
        "node[1-100]".to_string(),
        "*".to_string(),
        "-rf".to_string(),
        String::new(),
    ];
    for provider in ["static", "slurm", "ec2"] {
        let script = kit::repo_root()
            .join("lifecycle-scripts/providers")
            .join(provider)
            .join("fence");
        for host in &hostile {
            let out = kit::run(
                Command::new("sh")
                    .arg(&script)
                    .args(["node-1", host])
                    .env("HOLDFAST_HOSTNAME", host)
                    .env_remove("HOLDFAST_ADDRESS")
                    .env("HOLDFAST_STATIC_FENCED", dir.join("hosts.fenced"))
                    .env(
                        "HOLDFAST_STATIC_FENCE",
                        format!("printf %s {{host}} > {}", out_file.display()),
                    )
                    // Neither the scheduler nor the cloud is asked: the name is refused first.
                    .env("PATH", "/usr/bin:/bin"),
            );
            assert!(!out.ok(), "{provider} fenced {host:?}: {}", out.stdout);
            // An empty host name leaves the node id to go by (the ec2 script then looks for
            // it in its record of launched instances and finds none); anything else that is not
            // a host name is refused as such.
            if !host.is_empty() {
                assert_eq!(
                    out.code(),
                    Some(2),
                    "{provider} fence of {host:?}: {}{}",
                    out.stdout,
                    out.stderr
                );
                assert!(
                    out.stderr.contains("refusing to fence"),
                    "{provider}: {}",
                    out.stderr
                );
            }
        }
    }
    assert!(!pwned.exists(), "a host name ran as shell code");
    // A good name reaches the operator's command as one argument, not as text pasted into it.
    let script = kit::repo_root().join("lifecycle-scripts/providers/static/fence");
    let out = kit::run(
        Command::new("sh")
            .arg(&script)
            .args(["node-1", "gpu-17.rack-3"])
            .env("HOLDFAST_HOSTNAME", "gpu-17.rack-3")
            .env("HOLDFAST_STATIC_FENCED", dir.join("hosts.fenced"))
            .env(
                "HOLDFAST_STATIC_FENCE",
                format!("printf %s {{host}} > {}", out_file.display()),
            ),
    );
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "gpu-17.rack-3");
}

#[tokio::test]
async fn browsers_get_a_locked_down_page_and_rebound_or_foreign_origins_are_refused() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-browser");
    let cluster = LocalCluster::start(exe, &dir, &[]).await.unwrap();
    let addr = cluster.addr.trim_start_matches("http://").to_string();
    let page = kit::http(
        &addr,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        &[],
    )
    .to_ascii_lowercase();
    for header in [
        "content-security-policy: default-src 'self'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(page.contains(header), "{header} missing:\n{page}");
    }
    // A gRPC-web call as a browser makes it: the dashboard's own origin passes…
    let call = |origin: &str, host: &str| {
        let empty_frame = [0u8, 0, 0, 0, 0];
        kit::http(
            &addr,
            &format!(
                "POST /holdfast.v1.OperatorService/ListNodes HTTP/1.1\r\nHost: {host}\r\n\
                 Origin: {origin}\r\nContent-Type: application/grpc-web+proto\r\n\
                 X-Grpc-Web: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
            ),
            &empty_frame,
        )
    };
    let own = call(&format!("http://{addr}"), &addr);
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    // …another site's page is refused, and so is this port reached by another site's name
    // (DNS rebinding: the page and the call are then "same-origin" under that name).
    let port = addr.rsplit(':').next().unwrap();
    let foreign = call("http://evil.example", &addr);
    assert!(
        foreign.starts_with("HTTP/1.1 403") && foreign.contains("cross-origin"),
        "{foreign}"
    );
    let rebound_host = format!("evil.example:{port}");
    let rebound = call(&format!("http://{rebound_host}"), &rebound_host);
    assert!(
        rebound.starts_with("HTTP/1.1 403") && rebound.contains("allowed_hosts"),
        "{rebound}"
    );
    drop(cluster);
}

/// Bounded history: a coordinator that keeps finished jobs for 1 s exports a finished job to
/// `archive.jsonl` beside its state file (0600), then forgets it; the running job stays.
#[tokio::test]
async fn a_finished_job_past_its_retention_is_archived_then_forgotten() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-retention");
    let config = kit::write_file(&dir, "coordinator.toml", "finished_retention_ms = 1000\n");
    let mut cluster = kit::local_cluster(exe, &dir, &["--config", &config], 2, 0).await;
    let job = |command: &[&str]| holdfast_proto::v1::JobSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        nodes: 1,
        ..Default::default()
    };
    let done = kit::submit(&cluster, job(&["true"])).await.job_id;
    let live = kit::submit(&cluster, job(&["sleep", "600"])).await.job_id;
    let archive = dir.join("archive.jsonl");
    let gone = |cluster: &LocalCluster| {
        let done = done.clone();
        let addr = cluster.addr.clone();
        kit::wait_for(WITHIN, move || {
            let (done, addr) = (done.clone(), addr.clone());
            async move {
                let mut client = holdfast_cli::client::connect(&addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let request = holdfast_proto::v1::GetJobRequest {
                    job_id: done.clone(),
                };
                match client.get_job(request).await {
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    other => Err(format!("job {done} still kept: {other:?}")),
                }
            }
        })
    };
    gone(&cluster).await;
    let text = std::fs::read_to_string(&archive).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported = lines
        .iter()
        .find(|l| l["kind"] == "job" && l["record"]["id"] == done.as_str())
        .unwrap_or_else(|| panic!("{done} not in the archive:\n{text}"));
    assert_eq!(exported["record"]["state"], "Succeeded", "{exported}");
    assert_eq!(mode(&archive), 0o600);
    assert!(!text.contains(&format!("\"id\":\"{live}\"")), "{text}");
    assert_eq!(kit::job(&cluster, &live).await.state, "running");
    // Forgetting was saved: a restarted coordinator does not bring the job back.
    cluster.kill_coordinator().unwrap();
    cluster.restart_coordinator().await.unwrap();
    gone(&cluster).await;
    assert_eq!(kit::job(&cluster, &live).await.state, "running");
}

/// A rogue coordinator: an agent that joined its cluster (`--ca-hash`) and is then pointed at a
/// coordinator with a CA of its own (same name, same port layout, another CA) refuses its
/// certificate, so it never registers there and nothing the rogue decides can reach it.
#[tokio::test]
async fn a_joined_agent_refuses_a_coordinator_of_another_ca() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-rogue");
    let start = |name: &'static str| {
        let pki = dir.join(name).join("pki").display().to_string();
        let dir = dir.join(name);
        async move {
            let mut cluster = LocalCluster::start(exe, &dir, &["--pki-dir", &pki])
                .await
                .unwrap();
            cluster.use_https();
            cluster
        }
    };
    let mut real = start("real").await;
    let mut rogue = start("rogue").await;
    let log = std::fs::read_to_string(dir.join("real/coordinator.log")).unwrap();
    let (token, hash) = printed_join(&log);
    real.start_agent("node-1", "worker", &["--join", &token, "--ca-hash", &hash])
        .unwrap();
    let admin = |name: &str| {
        let pki = dir.join(name).join("pki");
        let token = std::fs::read_to_string(pki.join("admin.token")).unwrap();
        (
            token.trim().to_string(),
            std::fs::read(pki.join("ca.pem")).unwrap(),
        )
    };
    let (token, ca) = admin("real");
    let operator = connect_with(&real.addr, Some(&token), Some(&ca))
        .await
        .unwrap();
    kit::wait_node_ready(&operator, "node-1", WITHIN).await;
    real.kill_agent("node-1").unwrap();

    // The same agent, its joined identity and pinned CA, now dialling the rogue.
    let joined = real.state_dir("node-1");
    std::fs::create_dir_all(rogue.state_dir("node-1")).unwrap();
    let copied = kit::run(
        Command::new("cp")
            .arg("-a")
            .arg(joined.join("pki"))
            .arg(rogue.state_dir("node-1")),
    );
    assert!(copied.ok(), "{copied:?}");
    rogue.start_agent("node-1", "worker", &[]).unwrap();
    let agent_log = dir.join("rogue/node-1.log");
    kit::wait_for(WITHIN, || async {
        let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
        kit::check(log.to_lowercase().contains("certificate"), || {
            format!("the agent did not refuse the rogue's certificate:\n{log}")
        })
    })
    .await;
    let (token, ca) = admin("rogue");
    let mut rogue_operator = connect_with(&rogue.addr, Some(&token), Some(&ca))
        .await
        .unwrap();
    let nodes = rogue_operator
        .list_nodes(holdfast_proto::v1::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert!(
        nodes.is_empty(),
        "the agent registered at the rogue: {nodes:?}"
    );
    // So the rogue has no one to run a job on.
    let refused = rogue_operator
        .submit_job(holdfast_proto::v1::SubmitJobRequest {
            spec: Some(holdfast_proto::v1::JobSpec {
                command: vec!["touch".into(), dir.join("pwned").display().to_string()],
                nodes: 1,
                ..Default::default()
            }),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(!dir.join("pwned").exists());
    assert!(!rogue.state_dir("node-1").join("worker.json").exists());
}

/// 10,000 fresh node ids over the wire, 32 streams at a time on one connection, against a
/// coordinator that registers at most 2 nodes: every one is refused naming `max_nodes`,
/// nothing is stored for them, and the two real agents stay ready throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_fresh_node_ids_leave_the_registry_bounded() {
    use holdfast_proto::v1::agent_service_client::AgentServiceClient;
    use tokio_stream::StreamExt;
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-flood");
    // Admission lets the flood through as fast as it can come, so that it is max_nodes that
    // answers; a tick the loaded box runs late still holds admission for a moment, and those
    // hellos are told to retry instead, which bounds the registry just as well.
    let settings = "max_nodes = 2\nhello_rate_per_s = 1000000\nhello_burst = 1000000\n";
    let config = kit::write_file(&dir, "coordinator.toml", settings);
    let cluster = kit::local_cluster(exe, &dir, &["--config", &config], 2, 0).await;
    let channel = tonic::transport::Endpoint::from_shared(cluster.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..32usize {
        let mut client = AgentServiceClient::new(channel.clone());
        senders.spawn(async move {
            let mut refusals = Vec::new();
            for i in (lane..10_000).step_by(32) {
                let hello = kit::raw_grpc::hello(&format!("fresh-{i}"));
                let hellos = tokio_stream::iter([hello]).chain(tokio_stream::pending());
                match client.session(hellos).await {
                    Err(status) => refusals.push(status),
                    Ok(_) => panic!("fresh-{i} was welcomed past max_nodes"),
                }
            }
            refusals
        });
    }
    let (mut refused, mut over_max) = (0, 0);
    while let Some(lane) = senders.join_next().await {
        for status in lane.unwrap() {
            match status.code() {
                tonic::Code::ResourceExhausted => {
                    assert!(status.message().contains("max_nodes"), "{status:?}");
                    over_max += 1;
                }
                tonic::Code::Unavailable => {
                    let retry = status.metadata().get("holdfast-retry-after-ms");
                    assert!(retry.is_some(), "{status:?}");
                }
                _ => panic!("{status:?}"),
            }
            refused += 1;
        }
    }
    assert_eq!(refused, 10_000);
    assert!(over_max > 0, "no hello reached the max_nodes check");
    eprintln!(
        "10,000 refused hellos in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let nodes = kit::nodes(&cluster).await;
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["node-1", "node-2"]);
    assert!(nodes.iter().all(|n| n.state == "ready"), "{nodes:?}");
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap();
    assert!(
        !log.contains("lost"),
        "a real agent was lost in the flood:\n{log}"
    );
}

/// A power cut while the agent saves `fencing.json`: a real process is SIGKILLed between the
/// synced temp file and the rename (the `test-seams` hook of `holdfast_core::durable`). The
/// previous file is read whole, the torn temp file is ignored, and the next save replaces it.
#[test]
fn a_power_cut_during_the_fencing_save_keeps_the_previous_term() {
    use holdfast_agent::fencing::store;
    const CHILD: &str = "HOLDFAST_TEST_FENCING_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        // The child: raises the term to 9 and is killed before the rename.
        let shared = store::SharedFencing::load(Path::new(&dir));
        let _ = shared.decide(|f| f.observe(9));
        return;
    }
    let dir = Scratch::new("security-power-cut");
    let shared = store::SharedFencing::load(&dir);
    shared.decide(|f| f.observe(5)).unwrap();
    let file = store::path(&dir);
    let tmp = dir.join("fencing.json.tmp");
    let mut child = kit::KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_power_cut_during_the_fencing_save_keeps_the_previous_term",
            ])
            .env(CHILD, &*dir)
            .env("HOLDFAST_TEST_HANG_BEFORE_RENAME", &file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The new content is whole and synced in the temp file: the rename is next.
    kit::wait_for_blocking(WITHIN, || {
        let text = std::fs::read_to_string(&tmp).unwrap_or_default();
        kit::check(text.contains("9"), || {
            format!("no new content yet: {text:?}")
        })
    });
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(tmp.exists(), "the cut left the temp file");
    assert_eq!(
        store::load(&dir).term(),
        5,
        "the previous file is read whole"
    );
    // The next save starts over and replaces the file.
    store::SharedFencing::load(&dir)
        .decide(|f| f.observe(7))
        .unwrap();
    assert_eq!(store::load(&dir).term(), 7);
    assert!(!tmp.exists());
    assert!(file.exists());
}

#[tokio::test]
async fn a_joined_agent_renews_its_short_lived_certificate_until_revoked() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("security-renew");
    let pki = dir.join("pki");
    let config = dir.join("coordinator.toml");
    // 12 s, backdated 12 s: the agent renews 4 s after each issue (two thirds of 24 s).
    std::fs::write(&config, "node_cert_lifetime_s = 12\n").unwrap();
    let (pki_arg, config_arg) = (pki.display().to_string(), config.display().to_string());
    let mut cluster =
        LocalCluster::start(exe, &dir, &["--pki-dir", &pki_arg, "--config", &config_arg])
            .await
            .unwrap();
    let https = cluster.use_https();
    let first = first_start(&dir, &pki);
    let operator = connect_with(&https, Some(&first.admin), Some(&first.ca))
        .await
        .unwrap();
    cluster
        .start_agent(
            "node-r",
            "worker",
            &["--join", &first.token, "--ca-hash", &first.hash],
        )
        .unwrap();
    kit::wait_node_ready(&operator, "node-r", WITHIN).await;
    let issued = || holdfast_coordinator::pki::Pki::new(&pki).issued().unwrap()["node-r"].clone();
    let first = issued().serial;
    let node_key = cluster.state_dir("node-r").join("pki/node.key");

    // Renewed twice (the second time with the renewed certificate), the key kept private.
    kit::wait_for(WITHIN, || async {
        let renewals = issued().superseded.len();
        kit::check(renewals >= 2, || {
            format!("{renewals} renewals of the node certificate so far")
        })
    })
    .await;
    assert!(issued().superseded.iter().any(|s| s.serial == first));
    assert_eq!(mode(&node_key), 0o600);

    // A fresh agent process connects with what it stored (killed mid-renewal, the replaced
    // certificate still works until it expires, and it renews again).
    cluster.kill_agent("node-r").unwrap();
    cluster.start_agent("node-r", "worker", &[]).unwrap();
    kit::wait_node_ready(&operator, "node-r", WITHIN).await;

    // Revoked: the next renewal is refused, and the node keeps no live certificate.
    let revoke = kit::run(
        Command::new(exe)
            .args(["cert", "revoke", "node-r", "--pki-dir", &pki_arg])
            .env_remove("HOLDFAST_PKI_DIR"),
    );
    assert!(revoke.ok(), "{}", revoke.stderr);
    kit::wait_for(WITHIN, || async {
        let log = std::fs::read_to_string(dir.join("node-r.log")).unwrap_or_default();
        kit::check(log.contains("cannot be renewed: it was revoked"), || {
            "the agent's renewal was not refused".into()
        })
    })
    .await;
    assert!(
        issued().revoked,
        "a renewal replaced the revoked certificate"
    );
}
