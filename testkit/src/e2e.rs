//! The end-to-end rig: a holdfast cluster on [`netns`](crate::netns) hosts — the coordinator on
//! host `control`, a real S3 server (s3s-fs) on host `s3`, one agent per training host — running
//! `examples/train_ddp.py` through real `torchrun` (gloo on CPU) with checkpoints in S3; and the
//! same job without holdfast, for comparison: under plain `torchrun --max-restarts=3` or NVIDIA's
//! `ft_launcher` ([`E2eBaseline`]).
//!
//! Faults are real: a host's processes SIGKILLed, its cable cut, a training process killed or
//! SIGSTOPped, a fatal XID written to the agent's fault-injection seam. [`NetnsCluster::run_job`]
//! injects one at a step and measures detection and recovery from the coordinator's incidents;
//! [`run_baseline`] measures the same from the launchers' output. The end-to-end tests and
//! `holdfast-e2e` (behind `scripts/bench-e2e.sh`) both use them.
//!
//! Operator calls must come from the control host's namespace: use [`NetnsCluster::block_on`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use holdfast_coordinator::checkpoint::CheckpointStore;
use holdfast_proto::v1 as pb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use holdfast_cli::client::{self, Client};
use holdfast_cli::follow;

use crate::netns::{Lab, IFNAME};
use crate::Rig;

/// The host of the coordinator (and of the test's operator calls).
pub const CONTROL_HOST: &str = "control";
/// The host of the S3 server.
pub const S3_HOST: &str = "s3";
/// The bucket checkpoints go to.
pub const BUCKET: &str = "holdfast-e2e";
const S3_PORT: u16 = 9000;
const COORDINATOR_PORT: u16 = 7070;
/// Credentials the S3 server checks signatures with.
const S3_KEY: &str = "holdfast";
const S3_SECRET: &str = "holdfast-secret";

/// The repository's `examples/` directory (the training script and torchrun wrapper).
pub fn examples_dir() -> PathBuf {
    crate::repo_root().join("examples")
}

/// The external programs the rig runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub holdfast: PathBuf,
    /// `torchrun` of the virtualenv with torch and boto3.
    pub torchrun: PathBuf,
    /// `s3s-fs`.
    pub s3_server: PathBuf,
}

impl Tools {
    /// Finds them through the variables `scripts/setup/40-torch.sh` and `41-s3.sh` export;
    /// the error says what is missing.
    pub fn from_env(holdfast: &Path) -> Result<Tools, String> {
        let var = |name: &str| -> Result<PathBuf, String> {
            let value = std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
                format!("{name} is not set (source scripts/setup/40-torch.sh and 41-s3.sh)")
            })?;
            if !value.exists() {
                return Err(format!("{name}={} does not exist", value.display()));
            }
            Ok(value)
        };
        crate::netns::available()?;
        Ok(Tools {
            holdfast: holdfast.to_path_buf(),
            torchrun: var("HOLDFAST_TORCHRUN")?,
            s3_server: var("HOLDFAST_S3_SERVER")?,
        })
    }

    /// For tests: the tools, or `None` after printing `skipped: <why>` — unless under
    /// HOLDFAST_TEST_STRICT=1 (scripts/test.sh), where a missing tool fails the test.
    pub fn for_tests(holdfast: &Path) -> Option<Tools> {
        crate::require(
            Tools::from_env(holdfast).map_err(|why| format!("the end-to-end tier: {why}")),
        )
    }
}

/// The training job's shape.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub nodes: u32,
    pub steps: u64,
    pub step_time_s: f64,
    pub ckpt_every: u64,
    pub stall_timeout_s: f64,
    pub restart_budget: u32,
    /// Key prefix of the job's checkpoints inside [`BUCKET`].
    pub prefix: String,
    /// How holdfast starts the ranks on each host.
    pub launcher: E2eLauncher,
}

/// What `train_ddp.py` imports that a warm standby can do ahead: torch, the compiler stack
/// torch loads lazily on the optimizer's first use (over a second here), and boto3 for S3.
pub const WARM_IMPORTS: [&str; 3] = ["torch", "torch._dynamo", "boto3"];

/// How holdfast starts the job's ranks on each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum E2eLauncher {
    /// `torchrun` on every host (c10d rendezvous), as an unmodified torchrun job runs.
    #[default]
    Torchrun,
    /// holdfast's native launcher: `python train_ddp.py` per local rank, torchrun's variables.
    Native,
    /// The native launcher with warm standby interpreters (torch imported ahead of a relaunch).
    NativeWarm,
    /// In-process restart (`restart: in_process`): `train_inprocess.py` (the same job through
    /// `holdfast.run`) on the native launcher with warm standbys; survivors re-form the group
    /// in place and a replaced rank takes the state from a survivor.
    #[value(name = "inprocess")]
    InProcess,
    /// The memory state tier: `train_memtier.py` (train_ddp.py's job keeping each rank's state
    /// in host memory and on a peer host every step) on the native launcher with warm
    /// standbys; a relaunch resumes from the memory tier when it is newer than S3.
    #[value(name = "memtier")]
    Memtier,
}

impl E2eLauncher {
    pub fn name(self) -> &'static str {
        match self {
            E2eLauncher::Torchrun => "torchrun",
            E2eLauncher::Native => "native",
            E2eLauncher::NativeWarm => "native-warm",
            E2eLauncher::InProcess => "inprocess",
            E2eLauncher::Memtier => "memtier",
        }
    }
}

/// What a baseline run (no holdfast) launches the job's hosts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum E2eBaseline {
    /// Plain `torchrun --max-restarts=3` with c10d rendezvous on the job's hosts.
    #[default]
    Torchrun,
    /// NVIDIA's `ft_launcher` (the `nvidia-resiliency-ext` package, in `$HOLDFAST_FT_LAUNCHER`
    /// on top of the torch virtualenv): torchrun's launcher with a rank monitor per rank fed by
    /// the trainer's heartbeats, restarts, and a launcher on the spare host waiting in the
    /// rendezvous as a hot spare.
    FtLauncher,
}

impl E2eBaseline {
    /// The `mode` of its JSON line.
    pub fn name(self) -> &'static str {
        match self {
            E2eBaseline::Torchrun => "baseline",
            E2eBaseline::FtLauncher => "ft-launcher",
        }
    }
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            nodes: 2,
            steps: 40,
            step_time_s: 0.25,
            ckpt_every: 5,
            // Steps take 0.25 s; start-up (torch imports, rendezvous) is covered by the
            // coordinator's startup grace, not by this.
            stall_timeout_s: 6.0,
            restart_budget: 3,
            prefix: "run".into(),
            launcher: E2eLauncher::Torchrun,
        }
    }
}

impl JobOptions {
    /// The training script's flags for steps, pace and checkpoint interval.
    fn schedule_args(&self) -> [String; 6] {
        holdfast_cli::demo::schedule_args(self.steps, self.step_time_s, self.ckpt_every)
    }
}

/// The faults the rig injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum E2eFault {
    /// SIGKILL every process of the host (agent, torchrun, training).
    HostKill,
    /// Unplug the host's cable: it and its processes live on, cut off.
    HostPartition,
    /// SIGKILL the host's training process (torchrun and the agent live on).
    WorkerKill,
    /// SIGSTOP the host's training process: it hangs.
    WorkerHang,
    /// A fatal XID (79, fallen off the bus) through the agent's fault-injection seam.
    Xid,
    /// The host goes silent (its cable cut) and dies, and its peers' training processes die at
    /// once, as collectives failing on a lost peer do: their exits reach the coordinator
    /// before the host's loss, which only a heartbeat timeout shows.
    HostLostPeersExit,
}

impl E2eFault {
    pub fn name(self) -> &'static str {
        match self {
            E2eFault::HostKill => "host-kill",
            E2eFault::HostPartition => "host-partition",
            E2eFault::WorkerKill => "worker-kill",
            E2eFault::WorkerHang => "worker-hang",
            E2eFault::Xid => "xid",
            E2eFault::HostLostPeersExit => "host-lost-peers-exit",
        }
    }
}

/// The training processes among `pids`: the pythons running `train_ddp.py` (not torchrun), and
/// the agents' standby interpreters that took a launch (their output goes to a worker log; an
/// idle standby's does not).
fn training_pids(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let standby_at_work = args.iter().any(|a| a.ends_with("zygote.py"))
                && std::fs::read_link(format!("/proc/{pid}/fd/1"))
                    .is_ok_and(|out| out.to_string_lossy().contains("/logs/"));
            standby_at_work
                || (args
                    .iter()
                    .any(|a| a.ends_with("train_ddp.py") || a.ends_with("train_inprocess.py"))
                    && !args
                        .iter()
                        .any(|a| a.contains("torchrun") || a.contains("ft_launcher")))
        })
        .collect()
}

/// What one run with a fault measured.
#[derive(Debug, Clone)]
pub struct FaultRun {
    pub fault: E2eFault,
    pub victim: String,
    /// Unix ms of the injection.
    pub fault_at: i64,
    /// The job's step when the fault was injected.
    pub fault_step: u64,
    /// The newest complete checkpoint in S3 when the fault was injected.
    pub checkpoint_at_fault: Option<u64>,
    /// The job at its end (or at the deadline).
    pub job: pb::Job,
    pub incidents: Vec<pb::Incident>,
    /// Job messages seen while it ran, in order (e.g. "waiting for a replacement…").
    pub messages: Vec<String>,
}

impl FaultRun {
    /// The first incident opened at or after the fault.
    pub fn incident(&self) -> Option<&pb::Incident> {
        self.incidents
            .iter()
            .find(|i| i.detected_unix_ms >= self.fault_at - 1000)
    }

    pub fn detect_s(&self) -> Option<f64> {
        self.incident()
            .filter(|i| i.detected_unix_ms > 0)
            .map(|i| (i.detected_unix_ms - self.fault_at) as f64 / 1000.0)
    }

    /// Fault → the job's first step past the checkpoint it resumed from.
    pub fn first_step_after_fault_s(&self) -> Option<f64> {
        self.incident()
            .filter(|i| i.resumed_unix_ms > 0)
            .map(|i| (i.resumed_unix_ms - self.fault_at) as f64 / 1000.0)
    }

    pub fn recovered(&self) -> bool {
        self.job.state == "succeeded" && self.first_step_after_fault_s().is_some()
    }

    /// Steps done before the fault that the job did again: the job's step when the fault was
    /// injected minus the step its recovery resumed from (a checkpoint's, or the survivors'
    /// under an in-process restart).
    pub fn lost_steps(&self) -> Option<u64> {
        let incident = self.incident().filter(|i| i.resumed_unix_ms > 0)?;
        Some(self.fault_step.saturating_sub(incident.resumed_from_step))
    }

    pub fn json(&self) -> serde_json::Value {
        let mut line = bench_json(
            "holdfast",
            self.fault,
            self.detect_s(),
            self.first_step_after_fault_s(),
            self.recovered(),
        );
        line["lost_steps"] = self.lost_steps().into();
        line["state_tier"] = self.incident().map(|i| i.state_tier.clone()).into();
        line
    }
}

impl FaultRun {
    /// Where the time from the fault to the first step went, in seconds, from the incident's
    /// times and the `phase NAME UNIX_S` lines `train_ddp.py` prints (the latest rank of the
    /// first generation after the fault; its worker logs are under `nodes_dir/*/logs`):
    /// detect (fault → incident), stop (→ the failed generation stopped, the node fenced),
    /// spawn (→ every rank's script running: replacement, launch, process start), imports
    /// (→ torch imported), rendezvous (→ process group joined), state (→ checkpoint loaded),
    /// first_step (→ the first step past it). Null where a time is missing.
    pub fn phases(&self, nodes_dir: &Path) -> serde_json::Value {
        let Some(incident) = self.incident() else {
            return serde_json::Value::Null;
        };
        let marks = phase_marks(nodes_dir, 2);
        let ms = |v: i64| (v > 0).then_some(v as f64 / 1000.0);
        let times = [
            ms(self.fault_at.max(0)),
            ms(incident.detected_unix_ms),
            ms(incident.fenced_unix_ms),
            marks.get("start").copied(),
            marks.get("imports").copied(),
            marks.get("rendezvous").copied(),
            marks.get("state").copied(),
            ms(incident.resumed_unix_ms),
        ];
        let names = [
            "detect",
            "stop",
            "spawn",
            "imports",
            "rendezvous",
            "state",
            "first_step",
        ];
        phase_spans(&names, &times)
    }
}

/// The latest time each `phase NAME UNIX_S` line was printed by a rank of `generation`, from
/// the worker logs (`<job>-g<generation>-r<rank>.log`) under `nodes_dir/*/logs`.
fn phase_marks(nodes_dir: &Path, generation: u64) -> BTreeMap<String, f64> {
    let mut marks: BTreeMap<String, f64> = BTreeMap::new();
    let tag = format!("-g{generation}-r");
    let nodes = std::fs::read_dir(nodes_dir).into_iter().flatten().flatten();
    for node in nodes {
        let logs = std::fs::read_dir(node.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten();
        for log in logs.filter(|l| l.file_name().to_string_lossy().contains(&tag)) {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("phase"), Some(name), Some(Ok(at))) = (
                    words.next(),
                    words.next(),
                    words.next().map(str::parse::<f64>),
                ) {
                    let latest = marks.entry(name.to_string()).or_insert(at);
                    *latest = latest.max(at);
                }
            }
        }
    }
    marks
}

/// The line `scripts/bench-e2e.sh` prints.
pub fn bench_json(
    mode: &str,
    fault: E2eFault,
    detect_s: Option<f64>,
    first_step_s: Option<f64>,
    recovered: bool,
) -> serde_json::Value {
    let round = |v: Option<f64>| v.map(|s| (s * 1000.0).round() / 1000.0);
    serde_json::json!({
        "mode": mode,
        "fault": fault.name(),
        "detect_s": round(detect_s),
        "first_step_after_fault_s": round(first_step_s),
        "recovered": recovered,
    })
}

/// When and where a run injects its fault.
#[derive(Debug, Clone)]
pub struct Injection {
    pub fault: E2eFault,
    /// Inject once the job passed this step and a complete checkpoint exists.
    pub after_step: u64,
    /// The victim; `None` = the job's last node (not the rendezvous host).
    pub node: Option<String>,
}

/// A coordinator, an S3 server and agents on netns hosts. Dropping it stops them all and tears
/// the hosts down.
pub struct NetnsCluster {
    pub dir: PathBuf,
    pub tools: Tools,
    pub coordinator_url: String,
    pub s3_endpoint: String,
    coordinator: Option<Child>,
    s3: Option<Child>,
    agents: BTreeMap<String, Child>,
    pub lab: Lab,
}

impl NetnsCluster {
    /// Creates the hosts `control` and `s3`, starts the S3 server with the bucket, and the
    /// coordinator with `coordinator_args`. `dir` holds logs and agent state.
    pub fn start(
        tools: Tools,
        dir: &Path,
        coordinator_args: &[&str],
    ) -> anyhow::Result<NetnsCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab::create()?;
        let control = lab.add_host(CONTROL_HOST)?;
        let s3 = lab.add_host(S3_HOST)?;
        let mut cluster = NetnsCluster {
            dir: dir.to_path_buf(),
            tools,
            coordinator_url: format!("http://{}:{COORDINATOR_PORT}", control.addr),
            s3_endpoint: format!("http://{}:{S3_PORT}", s3.addr),
            coordinator: None,
            s3: None,
            agents: BTreeMap::new(),
            lab,
        };
        // The bucket is a directory of the server's root, made out of band (S3 clients here
        // cannot create buckets).
        let bucket = cluster.s3_root().join(BUCKET);
        std::fs::create_dir_all(&bucket)
            .with_context(|| format!("creating {}", bucket.display()))?;
        let mut s3_server = cluster.lab.command(S3_HOST, &cluster.tools.s3_server)?;
        s3_server
            .args([
                "--host",
                &s3.addr.to_string(),
                "--port",
                &S3_PORT.to_string(),
            ])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(cluster.s3_root());
        cluster.s3 = Some(cluster.spawn_logged(&mut s3_server, "s3", "the S3 server")?);
        cluster.wait_for_s3()?;

        let addr_file = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut coordinator = cluster.lab.command(CONTROL_HOST, &cluster.tools.holdfast)?;
        coordinator
            .args([
                "coordinator",
                "--listen",
                &format!("{}:{COORDINATOR_PORT}", control.addr),
                // The lab's own network: nothing outside the namespaces reaches it.
                "--insecure",
                "--addr-file",
            ])
            .arg(&addr_file)
            // Its own state file: the default one is the machine's.
            .arg("--state")
            .arg(dir.join("coordinator.redb"))
            .args(coordinator_args)
            .envs(cluster.s3_env());
        let child = cluster.spawn_logged(&mut coordinator, "coordinator", "the coordinator")?;
        cluster.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&addr_file).is_ok_and(|t| t.ends_with('\n')) {
            if let Some(Some(status)) = cluster
                .coordinator
                .as_mut()
                .map(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the coordinator exited at start ({status}); see {}/coordinator.log",
                    dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not start within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// Starts `command` with its output appended to the log `name` (see [`Rig::log_path`]).
    fn spawn_logged(
        &self,
        command: &mut std::process::Command,
        name: &str,
        what: &str,
    ) -> anyhow::Result<Child> {
        let path = self.log_path(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))
    }

    /// The variables S3 clients need: object_store (coordinator) and boto3 (training) both read
    /// them.
    pub fn s3_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.s3_endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The S3 server's data: `<root>/<bucket>/<key>` is an object, so a test may lay out many
    /// objects at once without the API.
    pub fn s3_root(&self) -> PathBuf {
        self.dir.join("s3-data")
    }

    /// Waits until the S3 server accepts connections.
    fn wait_for_s3(&self) -> anyhow::Result<()> {
        let _inside = self.lab.enter(CONTROL_HOST)?;
        let addr: std::net::SocketAddr = self
            .s3_endpoint
            .trim_start_matches("http://")
            .parse()
            .context("the S3 endpoint is not host:port")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the S3 server did not listen within 30 s; see {}/s3.log",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The checkpoint store of `prefix` in [`BUCKET`], as the coordinator opens it (call from
    /// the control host's namespace, e.g. inside [`NetnsCluster::block_on`]).
    pub fn checkpoint_store(&self, prefix: &str) -> anyhow::Result<CheckpointStore> {
        Ok(CheckpointStore::with_store(
            self.s3_store()?,
            prefix,
            &format!("s3://{BUCKET}/{prefix}"),
        ))
    }

    /// An S3 client of [`BUCKET`] (call from the control host's namespace).
    pub fn s3_store(&self) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(&self.s3_endpoint)
            .with_access_key_id(S3_KEY)
            .with_secret_access_key(S3_SECRET)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .context("building the S3 client")?;
        Ok(Arc::new(store))
    }

    /// Pids of the training processes running on `node`.
    pub fn training_processes(&self, node: &str) -> anyhow::Result<Vec<i32>> {
        Ok(training_pids(&self.lab.pids(node)?))
    }

    /// The virtualenv's python (beside its torchrun).
    pub fn python(&self) -> PathBuf {
        self.tools.torchrun.with_file_name("python")
    }

    /// The job spec that runs `train_ddp.py` on every host: through torchrun, or under
    /// holdfast's native launcher (one rank per host), as `options.launcher` says.
    pub fn job_spec(&self, options: &JobOptions) -> pb::JobSpec {
        let examples = examples_dir();
        if options.launcher != E2eLauncher::Torchrun {
            let in_process = options.launcher == E2eLauncher::InProcess;
            let script = match options.launcher {
                E2eLauncher::InProcess => "train_inprocess.py",
                E2eLauncher::Memtier => "train_memtier.py",
                _ => "train_ddp.py",
            };
            let mut command = vec![
                self.python().display().to_string(),
                examples.join(script).display().to_string(),
            ];
            command.extend(options.schedule_args());
            return pb::JobSpec {
                command,
                nproc_per_node: Some(1),
                warm_imports: if options.launcher != E2eLauncher::Native {
                    WARM_IMPORTS.map(String::from).to_vec()
                } else {
                    Vec::new()
                },
                restart: if in_process { "in_process" } else { "" }.into(),
                ..self.torchrun_job_spec(options)
            };
        }
        self.torchrun_job_spec(options)
    }

    fn torchrun_job_spec(&self, options: &JobOptions) -> pb::JobSpec {
        let examples = examples_dir();
        let mut command: Vec<String> = vec![
            examples.join("torchrun_host.sh").display().to_string(),
            self.tools.torchrun.display().to_string(),
        ];
        command.extend(
            [
                "--nnodes={nnodes}",
                "--node-rank={node_rank}",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                "--rdzv-endpoint={rdzv_endpoint}",
                "--rdzv-id={rdzv_id}",
                "--local-addr={local_addr}",
                // holdfast restarts the job; torchrun must hand every failure up at once.
                "--max-restarts=0",
                "--monitor-interval=0.1",
            ]
            .map(String::from),
        );
        command.push(examples.join("train_ddp.py").display().to_string());
        command.extend(options.schedule_args());
        let mut env: std::collections::HashMap<String, String> =
            self.s3_env().into_iter().collect();
        env.insert("GLOO_SOCKET_IFNAME".into(), IFNAME.into());
        env.insert("OMP_NUM_THREADS".into(), "1".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        pb::JobSpec {
            command,
            nodes: options.nodes,
            checkpoint_uri: format!("s3://{BUCKET}/{}", options.prefix),
            stall_timeout_s: options.stall_timeout_s,
            restart_budget: options.restart_budget,
            total_steps: options.steps,
            env,
            ..Default::default()
        }
    }

    /// Runs `future` on this thread inside the control host's namespace (where the
    /// coordinator and the S3 server can be reached).
    pub fn block_on<F: Future>(&self, future: F) -> anyhow::Result<F::Output> {
        let _inside = self.lab.enter(CONTROL_HOST)?;
        Ok(current_thread_runtime()?.block_on(future))
    }

    /// [`NetnsCluster::block_on`] for work that drives the cluster too (starts agents,
    /// injects faults): `work` gets it.
    pub fn control<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut NetnsCluster) -> T,
    ) -> anyhow::Result<T> {
        let _inside = self.lab.enter(CONTROL_HOST)?;
        Ok(current_thread_runtime()?.block_on(work(self)))
    }

    /// SIGKILLs every process of `node` (agent, torchrun, training) and reaps its agent;
    /// returns how many there were.
    fn kill_host_processes(&mut self, node: &str) -> anyhow::Result<usize> {
        let n = self.lab.kill_processes(node)?;
        if let Some(mut child) = self.agents.remove(node) {
            let _ = child.wait();
        }
        Ok(n)
    }

    /// Injects `fault` on `node`; says what was done.
    pub fn inject_fault(&mut self, fault: E2eFault, node: &str) -> anyhow::Result<String> {
        match fault {
            E2eFault::HostKill => self
                .kill_host_processes(node)
                .map(|n| format!("{n} processes SIGKILLed")),
            E2eFault::HostPartition => self.lab.cut(node).map(|()| "cable cut".to_string()),
            E2eFault::WorkerKill | E2eFault::WorkerHang => {
                let signal = if fault == E2eFault::WorkerKill {
                    Signal::SIGKILL
                } else {
                    Signal::SIGSTOP
                };
                let pid = self.signal_worker(node, signal)?;
                Ok(format!("training process {pid} got {signal}"))
            }
            E2eFault::HostLostPeersExit => {
                self.lab.cut(node)?;
                let peers: Vec<String> = (self.lab.hosts())
                    .map(|h| h.name.clone())
                    .filter(|h| h != node && h != CONTROL_HOST)
                    .collect();
                // Spares run no training process: only the job's other hosts are hit.
                let killed: Vec<u32> = (peers.iter())
                    .filter_map(|peer| self.signal_worker(peer, Signal::SIGKILL).ok())
                    .collect();
                anyhow::ensure!(
                    !killed.is_empty(),
                    "no peer of {node} runs a training process"
                );
                let n = self.kill_host_processes(node)?;
                Ok(format!(
                    "cable cut; peer training processes {killed:?} and {n} processes of the host SIGKILLed"
                ))
            }
            E2eFault::Xid => self
                .inject(node, "xid 79")
                .map(|()| "xid 79 injected".to_string()),
        }
    }

    /// Submits `spec`, injects the fault (if any) once the job passed its step with a complete
    /// checkpoint in S3, and follows the job to its end or `deadline`. Call inside
    /// [`NetnsCluster::block_on`]. `on_message` sees each new job message (a test adds a spare
    /// when the job says it waits for one).
    pub async fn run_job(
        &mut self,
        spec: pb::JobSpec,
        injection: Option<Injection>,
        deadline: Duration,
        mut on_message: impl FnMut(&mut NetnsCluster, &pb::Job),
    ) -> anyhow::Result<FaultRun> {
        let prefix = spec
            .checkpoint_uri
            .strip_prefix(&format!("s3://{BUCKET}/"))
            .unwrap_or_default()
            .to_string();
        let store = self.checkpoint_store(&prefix)?;
        let mut client = self.client().await?;
        let job = follow::submit(&mut client, spec).await?;
        let started = Instant::now();
        let mut run = FaultRun {
            fault: injection.as_ref().map_or(E2eFault::HostKill, |i| i.fault),
            victim: String::new(),
            fault_at: 0,
            fault_step: 0,
            checkpoint_at_fault: None,
            job: job.clone(),
            incidents: Vec::new(),
            messages: Vec::new(),
        };
        let mut pending = injection;
        loop {
            let current = client
                .get_job(pb::GetJobRequest {
                    job_id: job.job_id.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("reading job {}: {}", job.job_id, s.message()))?
                .into_inner();
            if !current.message.is_empty() && run.messages.last() != Some(&current.message) {
                run.messages.push(current.message.clone());
                on_message(self, &current);
            }
            run.job = current.clone();
            if follow::is_terminal(&current.state) {
                break;
            }
            if started.elapsed() > deadline {
                break;
            }
            let due = pending
                .as_ref()
                .is_some_and(|i| current.state == "running" && current.step >= i.after_step);
            if due {
                let checkpoint = store.resolve_latest(&[]).await?;
                if let (Some(checkpoint), Some(injection)) = (checkpoint, pending.take()) {
                    let victim = injection
                        .node
                        .clone()
                        .or_else(|| current.nodes.last().cloned())
                        .context("the job has no nodes")?;
                    run.fault_at = holdfast_coordinator::now_ms();
                    run.fault_step = current.step;
                    run.checkpoint_at_fault = Some(checkpoint.step);
                    let what = self.inject_fault(injection.fault, &victim)?;
                    tracing::info!(
                        fault = injection.fault.name(),
                        victim,
                        step = current.step,
                        "{what}"
                    );
                    run.victim = victim;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.incidents = client::incidents(&mut client, &job.job_id)
            .await
            .context("listing incidents")?;
        Ok(run)
    }
}

impl Rig for NetnsCluster {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn coordinator_url(&self) -> &str {
        &self.coordinator_url
    }

    /// Adds host `node` first, unless it exists.
    fn start_agent(&mut self, node: &str, role: &str, extra: &[&str]) -> anyhow::Result<()> {
        let host = match self.lab.host(node) {
            Ok(host) => host.clone(),
            Err(_) => self.lab.add_host(node)?,
        };
        let state = self.state_dir(node);
        std::fs::create_dir_all(&state)?;
        let mut agent = self.lab.command(node, &self.tools.holdfast)?;
        agent
            .args([
                "agent",
                "--coordinator",
                &self.coordinator_url,
                "--node-id",
                node,
                "--role",
                role,
                "--insecure",
            ])
            .args(["--advertise-address", &host.addr.to_string(), "--state-dir"])
            .arg(&state)
            // Each host its own memory tier: the hosts share this machine's /dev/shm.
            .arg("--memory-tier-dir")
            .arg(self.memory_tier_dir(node))
            .args(extra);
        let child = self.spawn_logged(&mut agent, node, &format!("the agent of {node}"))?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Every process of the host dies, the cable stays plugged in.
    fn kill_host(&mut self, node: &str) -> anyhow::Result<()> {
        self.kill_host_processes(node).map(drop)
    }

    /// The host's first training process (not torchrun, not the agent).
    fn signal_worker(&self, node: &str, signal: Signal) -> anyhow::Result<u32> {
        let pid = self
            .training_processes(node)?
            .first()
            .copied()
            .with_context(|| format!("no training process on {node}"))?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("signalling {pid}"))?;
        Ok(pid as u32)
    }

    async fn client(&self) -> anyhow::Result<Client> {
        client::connect(&self.coordinator_url).await
    }

    /// Connection errors count as not ready yet: the coordinator may still be starting.
    async fn wait_ready(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        crate::poll_until(within, || async {
            let ready = crate::ready_count(self).await;
            crate::check(ready >= count, || format!("{ready} ready"))
        })
        .await
        .map_err(|seen| anyhow::anyhow!("fewer than {count} nodes ready after {within:?}: {seen}"))
    }

    /// The lab's drop deletes the hosts.
    fn shutdown(&mut self) {
        for host in self.lab.hosts().map(|h| h.name.clone()).collect::<Vec<_>>() {
            let _ = self.lab.heal(&host);
            let _ = self.lab.kill_processes(&host);
        }
        let children = std::mem::take(&mut self.agents)
            .into_values()
            .chain(self.coordinator.take())
            .chain(self.s3.take());
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A runtime on this thread only: its sockets are opened in the namespace the thread is in.
fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime")
}

/// A line of output and when it was read.
type Line = (Instant, String);

/// Reads `child`'s stdout and stderr into `lines`, each with the time it arrived, and copies
/// them to `log`.
fn collect_output(
    child: &mut Child,
    lines: &Arc<Mutex<Vec<Line>>>,
    log: &Path,
) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let file = Arc::new(Mutex::new(file));
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let lines = lines.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if let Ok(mut f) = file.lock() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(mut all) = lines.lock() {
                    all.push((Instant::now(), line));
                }
            }
        });
    }
    Ok(())
}

/// What a launcher without holdfast (plain torchrun, `ft_launcher`) did with a fault.
#[derive(Debug, Clone)]
pub struct BaselineRun {
    pub baseline: E2eBaseline,
    pub fault: E2eFault,
    pub detect_s: Option<f64>,
    pub first_step_after_fault_s: Option<f64>,
    /// The job's step at the fault minus the step the restarted ranks resumed from.
    pub lost_steps: Option<u64>,
    pub recovered: bool,
    /// Where the time went (see [`baseline_phases`]).
    pub phases: serde_json::Value,
}

impl BaselineRun {
    pub fn json(&self) -> serde_json::Value {
        let mut line = bench_json(
            self.baseline.name(),
            self.fault,
            self.detect_s,
            self.first_step_after_fault_s,
            self.recovered,
        );
        line["lost_steps"] = self.lost_steps.into();
        line["phases"] = self.phases.clone();
        line
    }
}

/// A baseline's recovery in phases, in seconds, from its output after the fault (`after`, the
/// fault at Unix time `fault_unix`): detect (→ the first failure line), restart (→ the latest
/// restarted rank's script started: the launcher stopping the group, its rendezvous, the
/// spawn), then the `phase` marks `train_ddp.py` prints — imports (torch), rendezvous (process
/// group), state (checkpoint loaded) — and first_step (→ the first step past the resume point).
fn baseline_phases(
    after: &[Line],
    at: Instant,
    fault_unix: f64,
    run: &BaselineRun,
) -> serde_json::Value {
    let mut marks: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, line) in after {
        let mut words = line.split_whitespace();
        if let (Some("phase"), Some(name), Some(Ok(t))) = (
            words.next(),
            words.next(),
            words.next().map(str::parse::<f64>),
        ) {
            let latest = marks.entry(name).or_insert(t);
            *latest = latest.max(t);
        }
    }
    let detected = after
        .iter()
        .find(|(_, l)| is_failure_line(l))
        .map(|(t, _)| fault_unix + t.duration_since(at).as_secs_f64());
    let times = [
        Some(fault_unix),
        detected,
        marks.get("start").copied(),
        marks.get("imports").copied(),
        marks.get("rendezvous").copied(),
        marks.get("state").copied(),
        run.first_step_after_fault_s.map(|s| fault_unix + s),
    ];
    let names = [
        "detect",
        "restart",
        "imports",
        "rendezvous",
        "state",
        "first_step",
    ];
    phase_spans(&names, &times)
}

/// `ft_launcher`'s fault-tolerance settings for this job, after its documentation (heartbeat
/// API integration guide): heartbeat timeouts sized to the workload — the first heartbeat
/// after start-up (torch import, rendezvous, checkpoint load: up to ~20 s on a loaded 2-core
/// box), then at least the longest interval between steps (0.25 s steps, a checkpoint save
/// included); its other settings keep their defaults.
const FT_LAUNCHER_ARGS: [&str; 2] = [
    "--ft-initial-rank-heartbeat-timeout=60",
    "--ft-rank-heartbeat-timeout=10",
];

/// Runs the same job and fault under `baseline` — plain `torchrun --max-restarts=3`, or
/// `ft_launcher --max-restarts=3` with the trainer's heartbeats and a third launcher on the
/// spare host, which waits in the rendezvous's redundancy list until a round needs it — with
/// c10d rendezvous on `options.nodes` hosts of `cluster`'s lab
/// (no agents, no coordinator): the training script finds its latest complete checkpoint
/// itself (`--resume-latest`). Detection is the first line of the launcher or the workers
/// reporting an error after the fault; recovery is the first step printed after a restarted
/// worker resumed.
pub fn run_baseline(
    cluster: &mut NetnsCluster,
    options: &JobOptions,
    baseline: E2eBaseline,
    fault: E2eFault,
    after_step: u64,
    deadline: Duration,
) -> anyhow::Result<BaselineRun> {
    let mut nodes: Vec<String> = (1..=options.nodes).map(|i| format!("node-{i}")).collect();
    if baseline == E2eBaseline::FtLauncher {
        nodes.push("spare-1".into());
    }
    for node in &nodes {
        if cluster.lab.host(node).is_err() {
            cluster.lab.add_host(node)?;
        }
    }
    // ft_launcher's package lives in its own directory (PYTHONPATH), not in the shared
    // virtualenv: its NVML dependency would make every torch import there warn.
    let ft_package = match baseline {
        E2eBaseline::Torchrun => None,
        E2eBaseline::FtLauncher => Some(std::env::var_os("HOLDFAST_FT_LAUNCHER").context(
            "HOLDFAST_FT_LAUNCHER is not set (scripts/bench-e2e.sh --baseline ft-launcher installs it)",
        )?),
    };
    let launcher = match &ft_package {
        None => cluster.tools.torchrun.clone(),
        Some(dir) => Path::new(dir).join("bin").join("ft_launcher"),
    };
    let rdzv = format!("{}:29400", cluster.lab.host(&nodes[0])?.addr);
    let lines: Arc<Mutex<Vec<Line>>> = Arc::new(Mutex::new(Vec::new()));
    let mut children = Vec::new();
    let spec = cluster.job_spec(options);
    for (rank, node) in nodes.iter().enumerate() {
        let addr = cluster.lab.host(node)?.addr.to_string();
        let mut command = cluster.lab.command(node, &launcher)?;
        command.args([
            &format!("--nnodes={}", options.nodes),
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            &format!("--rdzv-endpoint={rdzv}"),
            "--rdzv-id=baseline",
            &format!("--rdzv-conf=is_host={}", rank == 0),
            &format!("--local-addr={addr}"),
            "--max-restarts=3",
        ]);
        if let Some(dir) = &ft_package {
            command.args(FT_LAUNCHER_ARGS).env("PYTHONPATH", dir);
        }
        command
            .arg(examples_dir().join("train_ddp.py"))
            .args(options.schedule_args())
            .args(["--checkpoint-uri", &spec.checkpoint_uri, "--resume-latest"])
            .args(ft_package.as_ref().map(|_| "--ft-heartbeats"))
            .envs(spec.env.iter())
            // The known workaround for torchrun restarts with a shared rendezvous store
            // (pytorch/pytorch#135712), as a user of torchrun alone would set it.
            .env("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} on {node}", launcher.display()))?;
        collect_output(&mut child, &lines, &cluster.log_path(node))?;
        children.push(child);
    }
    let store = cluster.checkpoint_store(&options.prefix)?;
    let started = Instant::now();
    let mut fault_at: Option<(Instant, usize)> = None;
    let mut fault_step = 0;
    // The host whose launcher the fault killed (its exit status says nothing of the job).
    let mut killed_host: Option<usize> = None;
    let mut result = BaselineRun {
        baseline,
        fault,
        detect_s: None,
        first_step_after_fault_s: None,
        lost_steps: None,
        recovered: false,
        phases: serde_json::Value::Null,
    };
    let mut fault_unix = 0.0;
    loop {
        let all_exited = children
            .iter_mut()
            .all(|c| c.try_wait().ok().flatten().is_some());
        let snapshot: Vec<Line> = lines.lock().map(|l| l.clone()).unwrap_or_default();
        match fault_at {
            None => {
                let step = snapshot
                    .iter()
                    .filter_map(|(_, l)| printed_step(l))
                    .max()
                    .unwrap_or(0);
                if step >= after_step {
                    let has_checkpoint = cluster.block_on(store.resolve_latest(&[]))??.is_some();
                    // The victim: a host training a rank other than the rendezvous host
                    // (under ft_launcher the hot spare is whichever host it left idle).
                    let victim = nodes[1..]
                        .iter()
                        .rev()
                        .find(|n| cluster.training_processes(n).is_ok_and(|p| !p.is_empty()))
                        .cloned();
                    if let (true, Some(victim)) = (has_checkpoint, victim) {
                        fault_at = Some((Instant::now(), snapshot.len()));
                        fault_unix = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        fault_step = step;
                        if fault == E2eFault::Xid {
                            // Without holdfast nothing reads the GPU's error stream: the
                            // fault goes unseen and the job runs on a failed GPU.
                        } else if fault == E2eFault::HostKill {
                            cluster.lab.kill_processes(&victim)?;
                            killed_host = nodes.iter().position(|n| *n == victim);
                        } else {
                            cluster.inject_fault(fault, &victim)?;
                        }
                    }
                }
            }
            Some((at, from)) => {
                let after = &snapshot[from.min(snapshot.len())..];
                if result.detect_s.is_none() {
                    if let Some((t, _)) = after.iter().find(|(_, l)| is_failure_line(l)) {
                        result.detect_s = Some(t.duration_since(at).as_secs_f64());
                    }
                }
                if let Some(resumed) = after.iter().position(|(_, l)| l.contains("resumed from")) {
                    result.lost_steps =
                        resumed_step(&after[resumed].1).map(|from| fault_step.saturating_sub(from));
                    if let Some((t, _)) = after[resumed..]
                        .iter()
                        .find(|(_, l)| printed_step(l).is_some())
                    {
                        result.first_step_after_fault_s = Some(t.duration_since(at).as_secs_f64());
                    }
                }
            }
        }
        if all_exited || started.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let succeeded = children
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| Some(*i) != killed_host)
        .all(|(_, c)| c.try_wait().ok().flatten().is_some_and(|s| s.success()));
    result.recovered =
        fault != E2eFault::Xid && succeeded && result.first_step_after_fault_s.is_some();
    if let Some((at, from)) = fault_at {
        let all: Vec<Line> = lines.lock().map(|l| l.clone()).unwrap_or_default();
        result.phases = baseline_phases(&all[from.min(all.len())..], at, fault_unix, &result);
    }
    for node in &nodes {
        let _ = cluster.lab.heal(node);
        let _ = cluster.lab.kill_processes(node);
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(result)
}

/// `step N` in a training output line.
fn printed_step(line: &str) -> Option<u64> {
    let rest = line.split("step ").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if line.trim_start().starts_with("step ") || line.contains("]:step ") {
        digits.parse().ok()
    } else {
        None
    }
}

/// The step of `… resumed from URI at step N`.
fn resumed_step(line: &str) -> Option<u64> {
    line.rsplit("at step ").next()?.trim().parse().ok()
}

/// A line in which torchrun or a worker reports a failure.
fn is_failure_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    [
        "error",
        "failed",
        "exception",
        "restarting",
        "connection reset",
        "closed by peer",
        "timed out",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Phases as a JSON object: `names[i]` spans `times[i]` → `times[i + 1]` (unix seconds),
/// rounded to the millisecond; null where either end was not seen.
fn phase_spans(names: &[&str], times: &[Option<f64>]) -> serde_json::Value {
    let mut phases = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let span = match (
            times.get(i).copied().flatten(),
            times.get(i + 1).copied().flatten(),
        ) {
            (Some(from), Some(to)) => Some(((to - from) * 1000.0).round() / 1000.0),
            _ => None,
        };
        phases.insert((*name).into(), span.into());
    }
    phases.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_failures_are_recognised() {
        assert_eq!(printed_step("step 12 loss 3.1"), Some(12));
        assert_eq!(printed_step("rank 0: done at step 40"), None);
        assert!(is_failure_line(
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:"
        ));
        assert!(!is_failure_line("step 3 loss 1.0"));
        assert_eq!(
            resumed_step("rank 1/2 generation 0: resumed from s3://b/p/step-15 at step 15"),
            Some(15)
        );
    }
}
