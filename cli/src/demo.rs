//! `holdfast demo`: a whole cluster on loopback as real processes — one coordinator, N worker
//! agents and S spare agents — running a small Python training job; a real fault is injected
//! after a few checkpoints and the incident report is printed when the job finishes.
//!
//! [`LocalCluster`] is also the process harness of the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use holdfast_proto::v1 as pb;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::follow;

/// The training script the demo runs, shipped in the binary.
pub const TRAIN_SCRIPT: &str = include_str!("../../examples/train_demo.py");
/// The checkpoint helpers it imports (`holdfast.checkpoint`: markers with a manifest).
const CHECKPOINT_HELPERS: &str = include_str!("../../python/holdfast/checkpoint.py");

/// Writes the training script into `dir` with the helpers it imports beside it; its path.
pub fn write_train_script(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("holdfast"))?;
    std::fs::write(
        dir.join("holdfast").join("checkpoint.py"),
        CHECKPOINT_HELPERS,
    )?;
    let script = dir.join("train_demo.py");
    std::fs::write(&script, TRAIN_SCRIPT)?;
    Ok(script)
}

/// The lifecycle scripts the demo's agents run (the ones in `lifecycle-scripts/`).
pub const LIFECYCLE_SCRIPTS: [(&str, &str); 3] = [
    (
        "on-create",
        include_str!("../../lifecycle-scripts/on-create"),
    ),
    ("on-fence", include_str!("../../lifecycle-scripts/on-fence")),
    (
        "health/host",
        include_str!("../../lifecycle-scripts/health/host"),
    ),
];

/// Writes the lifecycle scripts and a coordinator config that runs them into `dir`; returns
/// (script directory, coordinator config path).
pub fn write_lifecycle_setup(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let scripts = dir.join("lifecycle-scripts");
    for (name, body) in LIFECYCLE_SCRIPTS {
        let path = scripts.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        "bootstrap_script = \"on-create\"\ncheck_scripts = [\"health/host\"]\nscript_timeout_ms = 30000\n",
    )?;
    Ok((scripts, config))
}

/// The faults the demo can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the agent and its workers, as when a host dies.
    KillAgent,
    /// SIGKILL one worker process (healthy host): restart in place.
    KillWorker,
    /// SIGSTOP one worker: progress stalls and the stall timeout fires.
    Hang,
    /// A fatal GPU XID (79, fallen off the bus) through the agents' fault-injection seam: the
    /// node is fenced and replaced.
    Xid,
    /// SIGKILL the coordinator and start it again on the same port and state file: training
    /// goes on, no incident, no new generation.
    KillCoordinator,
    /// Kill a host while the first spare has gone bad: it fails its replacement check and is
    /// fenced, the second spare takes over (needs --spares 2).
    BadSpare,
    /// No fault.
    None,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill-agent",
            Fault::KillWorker => "kill-worker",
            Fault::Hang => "hang",
            Fault::Xid => "xid",
            Fault::KillCoordinator => "kill-coordinator",
            Fault::BadSpare => "bad-spare",
            Fault::None => "none",
        }
    }
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: u32,
    pub spares: u32,
    pub fault: Fault,
    pub steps: u64,
    pub step_time_s: f64,
    pub ckpt_every: u64,
    /// The fault is injected once the job passes this step.
    pub fault_at_step: u64,
    pub stall_timeout_s: f64,
    pub json: bool,
    /// Keep the working directory (logs, checkpoints) after the demo.
    pub keep: bool,
    /// How long the coordinator stays down with `Fault::KillCoordinator`.
    pub coordinator_outage: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 2,
            spares: 1,
            fault: Fault::KillAgent,
            steps: 80,
            step_time_s: 0.1,
            ckpt_every: 10,
            fault_at_step: 35,
            stall_timeout_s: 3.0,
            json: false,
            keep: false,
            coordinator_outage: Duration::from_secs(3),
        }
    }
}

/// A coordinator and agents running as child processes of this one, on loopback.
pub struct LocalCluster {
    pub dir: PathBuf,
    exe: PathBuf,
    pub addr: String,
    coordinator: Option<Child>,
    /// The coordinator's flags beyond listen address and state file, kept for restarts.
    coordinator_extra: Vec<String>,
    agents: BTreeMap<String, Child>,
}

impl LocalCluster {
    /// Starts `holdfast coordinator` (from `exe`) on a free loopback port with `extra` flags.
    /// Its state file is `<dir>/coordinator.redb`, unless `extra` has `--ephemeral`.
    pub async fn start(exe: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            addr: String::new(),
            coordinator: None,
            coordinator_extra: extra.iter().map(|s| s.to_string()).collect(),
            agents: BTreeMap::new(),
        };
        cluster.spawn_coordinator("127.0.0.1:0").await?;
        Ok(cluster)
    }

    /// A harness for agents of coordinators started elsewhere (several, for HA): `addr` is
    /// what agents are given, e.g. a comma-separated list.
    pub fn attach(exe: &Path, dir: &Path, addr: &str) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            addr: addr.to_string(),
            coordinator: None,
            coordinator_extra: Vec::new(),
            agents: BTreeMap::new(),
        })
    }

    /// The coordinator's state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("coordinator.redb")
    }

    async fn spawn_coordinator(&mut self, listen: &str) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let addr_file = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("coordinator.log"))?;
        let mut command = Command::new(&self.exe);
        command
            .args(["coordinator", "--listen", listen, "--addr-file"])
            .arg(&addr_file);
        if !self.coordinator_extra.iter().any(|a| a == "--ephemeral") {
            command.arg("--state").arg(self.state_file());
        }
        let child = command
            .args(&self.coordinator_extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} coordinator", self.exe.display()))?;
        self.coordinator = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if text.ends_with('\n') {
                    self.addr = format!("http://{}", text.trim());
                    return Ok(());
                }
            }
            if let Some(Some(status)) = self
                .coordinator
                .as_mut()
                .map(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "the coordinator exited at start ({status}); see {}",
                    dir.join("coordinator.log").display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the coordinator did not start within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the coordinator and reaps it (agents and workers keep running).
    pub fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .coordinator
            .take()
            .context("the coordinator is not running")?;
        child.kill().context("killing the coordinator")?;
        let _ = child.wait();
        Ok(())
    }

    /// Sends `signal` to the coordinator process.
    pub fn signal_coordinator(&self, signal: Signal) -> anyhow::Result<()> {
        let child = self
            .coordinator
            .as_ref()
            .context("the coordinator is not running")?;
        kill(Pid::from_raw(child.id() as i32), signal).context("signalling the coordinator")?;
        Ok(())
    }

    /// Starts the coordinator again on the same address and state file.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.coordinator.is_none(),
            "the coordinator is still running"
        );
        let listen = self.addr.trim_start_matches("http://").to_string();
        // The port was just freed; a lingering socket can hold it for a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_coordinator(&listen).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("coordinator restart failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`LocalCluster::restart_coordinator`] for callers that cannot await (event callbacks):
    /// blocks this thread until the coordinator listens again.
    pub fn restart_coordinator_blocking(&mut self) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.restart_coordinator())
        })
    }

    /// The agent's state directory (holds `worker.json`).
    pub fn state_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// Starts `holdfast agent` for `node` with `role` ("worker" or "spare").
    pub fn start_agent(&mut self, node: &str, role: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent_env(node, role, extra, &[])
    }

    /// [`LocalCluster::start_agent`] with extra environment for the agent process (and the
    /// workers it starts), e.g. a preloaded library that shifts its clock.
    pub fn start_agent_env(
        &mut self,
        node: &str,
        role: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let state = self.state_dir(node);
        std::fs::create_dir_all(&state)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{node}.log")))?;
        let child = Command::new(&self.exe)
            .args([
                "agent",
                "--coordinator",
                &self.addr,
                "--node-id",
                node,
                "--role",
                role,
                "--state-dir",
            ])
            .arg(&state)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting agent {node}"))?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Starts an agent with no extra flags for each `(node, role)`, then waits until every
    /// agent this cluster started is ready.
    pub async fn start_agents(
        &mut self,
        agents: &[(&str, &str)],
        within: Duration,
    ) -> anyhow::Result<()> {
        for (node, role) in agents {
            self.start_agent(node, role, &[])?;
        }
        self.wait_ready(self.agents.len(), within).await
    }

    /// Dials this cluster's coordinator over TLS from now on (it serves TLS: configured, or
    /// bootstrapped with `--pki-dir`); returns the `https://` address.
    pub fn use_https(&mut self) -> String {
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        self.addr = format!("https://127.0.0.1:{port}");
        self.addr.clone()
    }

    pub async fn client(&self) -> anyhow::Result<crate::client::Client> {
        crate::client::connect(&self.addr).await
    }

    /// Waits until `count` nodes are connected and ready.
    pub async fn wait_ready(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let nodes = client
                .list_nodes(pb::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            let ready = nodes
                .iter()
                .filter(|n| n.connected && n.node_state() == pb::NodeState::Ready)
                .count();
            if ready >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("only {ready} of {count} nodes ready after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker a node's agent runs now, from its `worker.json`.
    pub fn worker(&self, node: &str) -> Option<holdfast_agent::worker::WorkerRecord> {
        let text = std::fs::read_to_string(self.state_dir(node).join("worker.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Appends one fault line to the node's inject file (see [`inject`]).
    pub fn inject(&self, node: &str, fault: &str) -> anyhow::Result<()> {
        inject(&self.state_dir(node), fault)
    }

    /// Sends `signal` to the agent process of `node`.
    pub fn signal_agent(&mut self, node: &str, signal: Signal) -> anyhow::Result<()> {
        let child = self
            .agents
            .get(node)
            .with_context(|| format!("no agent {node}"))?;
        kill(Pid::from_raw(child.id() as i32), signal)
            .with_context(|| format!("signalling agent {node}"))?;
        Ok(())
    }

    /// SIGTERMs the agent of `node` (an orderly stop: it says goodbye and leaves its worker
    /// running) and waits up to `within` for it to exit.
    pub fn stop_agent(
        &mut self,
        node: &str,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.signal_agent(node, Signal::SIGTERM)?;
        let mut child = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent {node}"))?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("agent {node} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the agent and reaps it.
    pub fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let mut child = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent {node}"))?;
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// SIGKILLs everything of a host: its agent and its worker's process group.
    pub fn kill_host(&mut self, node: &str) -> anyhow::Result<()> {
        let worker = self.worker(node);
        self.kill_agent(node)?;
        if let Some(w) = worker {
            let _ = killpg(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Sends `signal` to the worker leader of `node`; returns its pid.
    pub fn signal_worker(&self, node: &str, signal: Signal) -> anyhow::Result<u32> {
        let w = self
            .worker(node)
            .with_context(|| format!("no worker running on {node}"))?;
        kill(Pid::from_raw(w.pid as i32), signal)
            .with_context(|| format!("signalling worker {}", w.pid))?;
        Ok(w.pid)
    }

    /// Kills every process it started, workers included.
    pub fn shutdown(&mut self) {
        let nodes: Vec<String> = std::fs::read_dir(self.dir.join("nodes"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (_, mut child) in std::mem::take(&mut self.agents) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in nodes {
            if let Some(w) = self.worker(&node) {
                let pgid = Pid::from_raw(w.pid as i32);
                let _ = killpg(pgid, Signal::SIGCONT);
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Appends one fault line to the inject file in an agent's `state_dir` (the agent must run with
/// fault injection enabled): `xid <code> [gpu <i>]`, `ecc-dbe [gpu <i>]`, `gpu-lost [gpu <i>]`.
pub fn inject(state_dir: &Path, fault: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let path = state_dir.join(holdfast_agent::health::inject::INJECT_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(format!("{fault}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The flags the training scripts (`examples/train_demo.py`, `examples/train_ddp.py`) take for
/// the job's length, pace and checkpoint interval.
pub fn schedule_args(steps: u64, step_time_s: f64, ckpt_every: u64) -> [String; 6] {
    [
        "--steps".into(),
        steps.to_string(),
        "--step-time".into(),
        step_time_s.to_string(),
        "--ckpt-every".into(),
        ckpt_every.to_string(),
    ]
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub job: pb::Job,
    pub incidents: Vec<pb::Incident>,
    /// Unix ms when the fault was injected (0 when none was).
    pub fault_at: i64,
    pub victim: String,
    /// Steps of the checkpoints that were complete right after the fault was injected.
    pub checkpoints_at_fault: Vec<u64>,
}

/// Steps of the complete checkpoints (`step-N/COMPLETE`) under a local prefix.
pub fn complete_checkpoints(prefix: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(prefix)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("COMPLETE").exists())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

impl DemoReport {
    pub fn to_json(&self) -> serde_json::Value {
        let t0 = self.fault_at;
        serde_json::json!({
            "job_state": self.job.state,
            "final_step": self.job.step,
            "generation": self.job.generation,
            "message": self.job.message,
            "fault_node": self.victim,
            "incidents": self.incidents.iter().map(|i| crate::tables::incident_json(i, t0)).collect::<Vec<_>>(),
        })
    }
}

/// Runs the demo with `exe` as the holdfast binary.
pub async fn run(exe: &Path, options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let python = which_python()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("holdfast-demo-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script = write_train_script(&dir)?;
    let say = |line: String| {
        if options.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "holdfast demo: {} nodes + {} spare(s), fault {}, working directory {}",
        options.nodes,
        options.spares,
        options.fault.name(),
        dir.display()
    ));
    let (script_dir, coordinator_config) = write_lifecycle_setup(&dir)?;
    let config_arg = coordinator_config.display().to_string();
    let mut cluster = LocalCluster::start(exe, &dir, &["--config", &config_arg]).await?;
    let script_arg = script_dir.display().to_string();
    let mut agent_args = vec!["--script-dir", script_arg.as_str()];
    // The injection seam is opened only for the fault that needs it.
    if options.fault == Fault::Xid {
        agent_args.push("--enable-fault-injection");
    }
    for i in 1..=options.nodes {
        cluster.start_agent(&format!("node-{i}"), "worker", &agent_args)?;
    }
    for i in 1..=options.spares {
        cluster.start_agent(&format!("spare-{i}"), "spare", &agent_args)?;
    }
    cluster
        .wait_ready(
            (options.nodes + options.spares) as usize,
            Duration::from_secs(30),
        )
        .await?;
    say(format!(
        "coordinator at {}; {} agents ready",
        cluster.addr,
        options.nodes + options.spares
    ));
    let mut client = cluster.client().await?;
    let mut command = vec![python, script.display().to_string()];
    command.extend(schedule_args(
        options.steps,
        options.step_time_s,
        options.ckpt_every,
    ));
    // The ranks wait for each other at every step, as collective training does: a lost host
    // stops the others, and a lost agent alone does not (its worker still steps).
    command.extend(["--sync-dir".into(), dir.join("sync").display().to_string()]);
    let spec = pb::JobSpec {
        command,
        nodes: options.nodes,
        checkpoint_uri: format!("file://{}", dir.join("checkpoints").display()),
        stall_timeout_s: options.stall_timeout_s,
        restart_budget: 3,
        total_steps: options.steps,
        ..Default::default()
    };
    let events = follow::watch(&mut client).await?;
    let job = follow::submit(&mut client, spec).await?;
    say(format!(
        "job {} accepted on {}",
        job.job_id,
        job.nodes.join(", ")
    ));
    let mut fault_at = 0i64;
    let mut victim = String::new();
    let mut checkpoints_at_fault = Vec::new();
    let checkpoint_dir = dir.join("checkpoints");
    let mut injection_error: Option<anyhow::Error> = None;
    let fault = options.fault;
    let budget = Duration::from_secs_f64(options.steps as f64 * options.step_time_s * 3.0 + 120.0);
    let final_job = follow::follow_events(
        &mut client,
        None,
        events,
        &job.job_id,
        budget,
        |event| {
            let Some(job) = &event.job else { return };
            if fault == Fault::None
                || fault_at != 0
                || job.job_state() != pb::JobState::Running
                || job.step < options.fault_at_step
            {
                return;
            }
            let Some(node) = job.nodes.last().cloned() else {
                return;
            };
            // Stamped before the first signal goes out: detection can only come after it.
            let injected_at = holdfast_coordinator::now_ms();
            let result = match fault {
                Fault::KillAgent => cluster
                    .kill_host(&node)
                    .map(|_| "agent and worker SIGKILLed".to_string()),
                Fault::KillWorker => cluster
                    .signal_worker(&node, Signal::SIGKILL)
                    .map(|pid| format!("worker {pid} SIGKILLed")),
                Fault::Hang => cluster
                    .signal_worker(&node, Signal::SIGSTOP)
                    .map(|pid| format!("worker {pid} SIGSTOPped")),
                Fault::Xid => cluster
                    .inject(&node, "xid 79 gpu 0")
                    .map(|_| "fatal Xid 79 injected on gpu 0".to_string()),
                Fault::KillCoordinator => {
                    let outage = options.coordinator_outage;
                    say(format!(
                        "{}  FAULT: SIGKILL of the coordinator at step {}; down for {:.1} s",
                        crate::tables::clock(holdfast_coordinator::now_ms()),
                        job.step,
                        outage.as_secs_f64()
                    ));
                    cluster
                        .kill_coordinator()
                        .map(|()| std::thread::sleep(outage))
                        .and_then(|()| cluster.restart_coordinator_blocking())
                        .map(|()| {
                            "coordinator SIGKILLed and restarted on the same port and state file"
                                .to_string()
                        })
                }
                Fault::BadSpare => std::fs::write(
                    cluster.state_dir("spare-1").join("unhealthy"),
                    "demo fault: spare-1 found with uncorrectable memory errors while idle\n",
                )
                .map_err(anyhow::Error::from)
                .and_then(|_| cluster.kill_host(&node))
                .map(|_| "agent and worker SIGKILLed; spare-1 marked unhealthy".to_string()),
                Fault::None => return,
            };
            fault_at = injected_at;
            checkpoints_at_fault = complete_checkpoints(&checkpoint_dir);
            victim = if fault == Fault::KillCoordinator {
                "coordinator".to_string()
            } else {
                node.clone()
            };
            match result {
                Ok(what) => say(format!(
                    "{}  FAULT injected at step {} on {victim}: {what}",
                    crate::tables::clock(fault_at),
                    job.step
                )),
                Err(e) => injection_error = Some(e),
            }
        },
        !options.json,
    )
    .await;
    if let Some(e) = injection_error {
        return Err(e.context("injecting the fault"));
    }
    let final_job = final_job?;
    let incidents = crate::client::incidents(&mut client, &final_job.job_id).await?;
    cluster.shutdown();
    drop(cluster);
    if !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(DemoReport {
        job: final_job,
        incidents,
        fault_at,
        victim,
        checkpoints_at_fault,
    })
}

/// Prints the human-readable report.
pub fn print_report(report: &DemoReport, to_stderr: bool) {
    let mut text = format!(
        "\njob {} {} at step {} (generation {}): {}\n",
        report.job.job_id,
        report.job.state,
        report.job.step,
        report.job.generation,
        report.job.message
    );
    if report.incidents.is_empty() {
        text.push_str("no incidents\n");
    }
    for i in &report.incidents {
        let t0 = if report.fault_at > 0 {
            report.fault_at
        } else {
            i.fault_unix_ms
        };
        let s = |t| crate::tables::secs(t0, t).map_or("-".to_string(), |v| format!("{v:.2} s"));
        text.push_str(&format!(
            "incident {}: {} on {} ({}), action {}{}\n  detect {} · fence {} · replace {} · relaunch {} · resume {} (from the fault) · resumed from step {}\n",
            i.id,
            i.cause,
            i.node_id,
            i.detail,
            i.action,
            if i.replacement_node_id.is_empty() { String::new() } else { format!(" → {}", i.replacement_node_id) },
            s(i.detected_unix_ms),
            s(i.fenced_unix_ms),
            s(i.replaced_unix_ms),
            s(i.relaunched_unix_ms),
            s(i.resumed_unix_ms),
            i.resumed_from_step
        ));
        for rejected in &i.rejected_candidates {
            text.push_str(&format!("  rejected candidate {rejected}\n"));
        }
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

fn which_python() -> anyhow::Result<String> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(candidate.to_string());
        }
    }
    anyhow::bail!("the demo's training script needs python3 on PATH")
}
