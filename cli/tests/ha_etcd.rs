//! High availability with a real etcd server: two coordinators, one leads; the leader is
//! SIGKILLed mid-training, the standby takes over, and a host killed right after the failover is
//! recovered exactly once. Built with `--features etcd` (scripts/test.sh runs it).
#![cfg(feature = "etcd")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_cli::demo::LocalCluster;
use holdfast_cli::{client, follow};
use holdfast_proto::v1 as pb;
use holdfast_testkit::{self as kit, free_port, holdfast_exe, KillOnDrop as Proc, Rig, Scratch};

/// The etcd binary: `$HOLDFAST_ETCD` (set by scripts/setup/20-etcd.sh) or `etcd` on PATH.
fn etcd_binary() -> Option<String> {
    let candidate = std::env::var("HOLDFAST_ETCD").unwrap_or_else(|_| "etcd".into());
    kit::require(if kit::host::runs(&candidate) {
        Ok(candidate)
    } else {
        Err("etcd not found (scripts/setup/20-etcd.sh installs it)".into())
    })
}

/// An etcd server on loopback with its own data directory.
fn start_etcd(binary: &str, dir: &Path) -> (Proc, String) {
    start_etcd_with(binary, dir, "http", &[])
}

/// [`start_etcd`] with client URLs of `scheme` and `extra` flags.
fn start_etcd_with(binary: &str, dir: &Path, scheme: &str, extra: &[String]) -> (Proc, String) {
    let client = free_port();
    let peer = free_port();
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new(binary)
        .args(["--name", "hf", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args(extra)
        .args([
            format!("--listen-client-urls={scheme}://127.0.0.1:{client}"),
            format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=hf=http://127.0.0.1:{peer}"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    kit::wait_for_blocking(Duration::from_secs(20), || {
        kit::check(
            std::net::TcpStream::connect(("127.0.0.1", client)).is_ok(),
            || format!("etcd did not start; see {}", dir.join("etcd.log").display()),
        )
    });
    (Proc(child), format!("{scheme}://127.0.0.1:{client}"))
}

/// One coordinator of the group.
struct Coordinator {
    proc: Option<Proc>,
    url: String,
}

fn start_coordinator(dir: &Path, etcd: &str, name: &str, port: u16) -> Coordinator {
    start_coordinator_with(dir, etcd, name, port, &[])
}

/// [`start_coordinator`] with `extra` flags.
fn start_coordinator_with(
    dir: &Path,
    etcd: &str,
    name: &str,
    port: u16,
    extra: &[&str],
) -> Coordinator {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(holdfast_exe!())
        .args([
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--etcd",
            etcd,
        ])
        .args(["--etcd-prefix", "/hf-test", "--etcd-lease-ttl-s", "2"])
        .args(["--reconnect-grace-ms", "6000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Coordinator {
        proc: Some(Proc(child)),
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until the operator API at `url` answers; returns how long that took.
async fn wait_serving(url: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut c) = client::connect(url).await {
            if c.list_jobs(pb::ListJobsRequest {}).await.is_ok() {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "{url} did not serve within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn workdir(name: &str) -> Scratch {
    Scratch::new(&format!("ha-{name}"))
}

/// An etcd server, two coordinators on it — `a` leading, `b` standing by — and agents that are
/// given both. Fields drop in order: the agents first, the directory last.
struct Ha {
    cluster: LocalCluster,
    b: Coordinator,
    a: Coordinator,
    _etcd: Proc,
    dir: Scratch,
}

/// [`Ha`] in a directory of its own with `workers` worker and `spares` spare agents ready;
/// `None` without etcd.
async fn ha(name: &str, workers: usize, spares: usize) -> Option<Ha> {
    let etcd_bin = etcd_binary()?;
    let dir = workdir(name);
    let (etcd_proc, etcd) = start_etcd(&etcd_bin, &dir);
    let a = start_coordinator(&dir, &etcd, "coordinator-a", free_port());
    wait_serving(&a.url, Duration::from_secs(30)).await;
    let b = start_coordinator(&dir, &etcd, "coordinator-b", free_port());
    let addrs = format!("{},{}", a.url, b.url);
    let mut cluster = LocalCluster::attach(holdfast_exe!(), &dir, &addrs).unwrap();
    cluster.start_nodes(workers, spares, &[]).unwrap();
    cluster
        .wait_ready(workers + spares, Duration::from_secs(30))
        .await
        .unwrap();
    Some(Ha {
        cluster,
        b,
        a,
        _etcd: etcd_proc,
        dir,
    })
}

impl Ha {
    /// Follows job `id` to its end through whichever coordinator leads; returns it with its
    /// incidents and the standby's log.
    async fn finish(&self, id: &str) -> (pb::Job, Vec<pb::Incident>, String) {
        let addrs = &self.cluster.addr;
        let done = follow::follow_at(addrs, id, Duration::from_secs(120), |_| {}, false)
            .await
            .unwrap();
        let incidents = kit::incidents(&self.cluster, id).await;
        let log = std::fs::read_to_string(self.dir.join("coordinator-b.log")).unwrap_or_default();
        (done, incidents, log)
    }
}

/// The job of these tests: two nodes, checkpoints in `dir`, a stall timeout that a failover
/// must not trip.
fn spec(dir: &Path, steps: u64) -> pb::JobSpec {
    pb::JobSpec {
        stall_timeout_s: 5.0,
        ..kit::train_spec(dir, 2, steps)
    }
}

/// Waits until job `id` runs at step 15 or later.
async fn wait_training(cluster: &LocalCluster, id: &str) {
    kit::wait_job(cluster, id, Duration::from_secs(60), |j| {
        j.state == "running" && j.step >= 15
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_leader_and_handles_a_fault_right_after() {
    let Some(mut ha) = ha("failover", 2, 1).await else {
        return;
    };
    // The standby does not serve.
    assert!(
        client::connect(&ha.b.url).await.is_err(),
        "the standby answers"
    );

    let id = kit::submit(&ha.cluster, spec(&ha.dir, 150)).await.job_id;
    wait_training(&ha.cluster, &id).await;

    // Kill the leader; the standby leads once the lease (2 s) runs out.
    drop(ha.a.proc.take());
    let failover = wait_serving(&ha.b.url, Duration::from_secs(30)).await;
    eprintln!("failover: {:.2} s", failover.as_secs_f64());
    // A host dies right after the failover.
    ha.cluster.kill_host("node-2").unwrap();

    let (done, incidents, log) = ha.finish(&id).await;
    let i = kit::assert_recovered_once(&done, &incidents, &log);
    assert_eq!(i.node_id, "node-2");
    assert_eq!(i.replacement_node_id, "spare-1");
    assert!(i.resumed_unix_ms > 0, "{incidents:?}");
    assert!(log.contains("coordinator restored: term 2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_open_when_the_leader_dies_is_finished_by_the_standby_exactly_once() {
    let Some(mut ha) = ha("midrecovery", 2, 0).await else {
        return;
    };
    let id = kit::submit(&ha.cluster, spec(&ha.dir, 100)).await.job_id;
    wait_training(&ha.cluster, &id).await;
    // A host dies with no spare ready: the job waits for a replacement. The leader dies then.
    ha.cluster.kill_host("node-2").unwrap();
    kit::wait_job(&ha.cluster, &id, Duration::from_secs(30), |j| {
        j.phase == "replacing"
    })
    .await;
    drop(ha.a.proc.take());
    wait_serving(&ha.b.url, Duration::from_secs(30)).await;
    // The spare arrives after the failover; the standby carries the open incident through.
    ha.cluster.start_agent("spare-1", "spare", &[]).unwrap();
    let (done, incidents, log) = ha.finish(&id).await;
    let i = kit::assert_recovered_once(&done, &incidents, &log);
    assert_eq!(
        (i.node_id.as_str(), i.replacement_node_id.as_str()),
        ("node-2", "spare-1")
    );
    assert!(i.resumed_unix_ms > 0 && i.to_generation == 2, "{i:?}");
    assert!(log.contains("recovering/replacing g1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_after_the_failover_steps_down_without_acting() {
    let Some(mut ha) = ha("zombie", 2, 0).await else {
        return;
    };
    let (a, b) = (&mut ha.a, &ha.b);
    // Freeze the leader (a stalled process, a long GC pause, a VM migration…).
    let pid = nix::unistd::Pid::from_raw(a.proc.as_ref().unwrap().0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    wait_serving(&b.url, Duration::from_secs(30)).await;
    // The agents notice the frozen stream and move to the new leader.
    kit::wait_for(Duration::from_secs(40), || async {
        let nodes = nodes_at(&b.url).await;
        let ready = nodes
            .iter()
            .filter(|n| n.connected && n.state == "ready")
            .count();
        kit::check(ready == 2, || {
            format!("agents did not move to the new leader: {nodes:?}")
        })
    })
    .await;
    // The old leader wakes up: every node looks silent to it, but its lease is gone, so it
    // may neither write that nor act on it. It exits.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let child = &mut a.proc.as_mut().unwrap().0;
    let status = kit::wait_for(Duration::from_secs(15), || {
        let exited = child.try_wait().unwrap();
        async move { exited.ok_or_else(|| "the woken leader kept running".to_string()) }
    })
    .await;
    let a_log = std::fs::read_to_string(ha.dir.join("coordinator-a.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(3), "{a_log}");
    // Nothing the old leader decided after waking reached the state or the agents.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes = nodes_at(&b.url).await;
    assert!(
        nodes.iter().all(|n| n.connected && n.state == "ready"),
        "{nodes:?}\n{a_log}"
    );
    assert!(!a_log.contains("→ fenced"), "{a_log}");
}

/// The nodes as the coordinator at `url` (not the group) has them.
async fn nodes_at(url: &str) -> Vec<pb::Node> {
    let mut ops = client::connect(url).await.unwrap();
    ops.list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes
}

/// Failover time, leader SIGKILLed → the standby serving the operator API, over several runs.
/// Run by scripts/bench-failover.sh (ignored in the normal test run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_failover_time() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let runs: usize = std::env::var("HOLDFAST_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = workdir("bench");
    let (_etcd, etcd) = start_etcd(&etcd_bin, &dir);
    let mut times = Vec::new();
    let mut leader = start_coordinator(&dir, &etcd, "c0", free_port());
    wait_serving(&leader.url, Duration::from_secs(30)).await;
    for run in 1..=runs {
        let standby = start_coordinator(&dir, &etcd, &format!("c{run}"), free_port());
        // Let the standby settle into polling before the leader dies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(leader.proc.take());
        let t = wait_serving(&standby.url, Duration::from_secs(30)).await;
        eprintln!("run {run}: failover {:.3} s", t.as_secs_f64());
        times.push(t.as_secs_f64());
        leader = standby;
    }
    println!("failover_s {}", kit::timing_summary(&mut times));
}

/// etcd over TLS with client certificates and users: a coordinator given the CA, a client
/// certificate and a user whose password is in a file leads and its state survives a restart;
/// one with a wrong password never leads. Neither password appears in a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_leads_through_etcd_with_tls_and_a_password_and_a_wrong_one_does_not() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let dir = workdir("tls-auth");
    // The client certificate names no etcd user: the password is what authenticates.
    kit::certificates(
        &dir,
        &[
            ("etcd", &["localhost", "127.0.0.1"]),
            ("client", &["holdfast-client"]),
        ],
    );
    let p = |name: &str| dir.join(name).display().to_string();
    let tls = [
        format!("--cert-file={}", p("etcd.pem")),
        format!("--key-file={}", p("etcd.key")),
        format!("--trusted-ca-file={}", p("ca.pem")),
        "--client-cert-auth".into(),
    ];
    let (_etcd, etcd) = start_etcd_with(&etcd_bin, &dir, "https", &tls);
    const PASSWORD: &str = "s3cret-etcd-password";
    // Users and auth on, through etcd's own HTTP gateway over the same mutual TLS.
    for (path, body) in [
        (
            "auth/user/add",
            format!(r#"{{"name":"root","password":"{PASSWORD}"}}"#),
        ),
        ("auth/role/add", r#"{"name":"root"}"#.to_string()),
        (
            "auth/user/grant",
            r#"{"user":"root","role":"root"}"#.to_string(),
        ),
        ("auth/enable", "{}".to_string()),
    ] {
        let ran = kit::run(
            Command::new("curl")
                .args(["-sS", "--fail", "--cacert", &p("ca.pem"), "--cert"])
                .args([&p("client.pem"), "--key", &p("client.key"), "-X", "POST"])
                .arg(format!("{etcd}/v3/{path}"))
                .args(["-d", &body]),
        );
        assert!(ran.ok(), "{path}: {ran:?}");
    }
    let config = |name: &str, password: &str| {
        let password_file = kit::write_file(&dir, &format!("{name}.password"), password);
        let text = format!(
            "etcd_ca_file = \"{}\"\netcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\n\
             etcd_user = \"root\"\netcd_password_file = \"{password_file}\"\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key"),
        );
        kit::write_file(&dir, &format!("{name}.toml"), &text)
    };
    let log = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();

    let wrong = config("wrong", "not-the-password\n");
    let _wrong = start_coordinator_with(&dir, &etcd, "wrong", free_port(), &["--config", &wrong]);
    kit::wait_for_blocking(Duration::from_secs(20), || {
        let text = log("wrong");
        kit::check(text.contains("waiting for etcd"), || text.clone())
    });
    let text = log("wrong");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let right = config("right", &format!("{PASSWORD}\n"));
    let port = free_port();
    let mut a = start_coordinator_with(&dir, &etcd, "right", port, &["--config", &right]);
    wait_serving(&a.url, Duration::from_secs(30)).await;
    // A node registers: state written to etcd.
    let mut cluster = LocalCluster::attach(holdfast_exe!(), &dir, &a.url).unwrap();
    cluster.start_nodes(1, 0, &[]).unwrap();
    cluster
        .wait_ready(1, Duration::from_secs(30))
        .await
        .unwrap();
    drop(a.proc.take());
    let again = start_coordinator_with(&dir, &etcd, "again", free_port(), &["--config", &right]);
    wait_serving(&again.url, Duration::from_secs(30)).await;
    let text = log("again");
    assert!(
        text.contains("coordinator restored: term 2, 1 nodes"),
        "{text}"
    );
    for name in ["right", "again"] {
        assert!(!log(name).contains(PASSWORD), "{name} logged the password");
    }
    assert!(log("wrong").lines().all(|l| !l.contains("leading as")));
}
