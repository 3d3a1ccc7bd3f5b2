//! The worker supervisor: runs the job's command as its own process group, reports its start,
//! progress and exit, and stops it with SIGTERM → grace → SIGKILL of the whole group.
//!
//! Commands arrive in order on one channel and are carried out one at a time, so a `Launch`
//! of generation g+1 always stops generation g first. Generations only go up: a command for an
//! older generation (a zombie coordinator's, or a late one) is refused.
//!
//! ## Workers outlive the agent
//! A worker is its own process group and writes its output to `<state_dir>/logs/…log`, not to
//! a pipe: an agent restart (crash, upgrade, `systemctl restart` with `KillMode=process`) leaves
//! it training. On start, [`Supervisor::adopt`] reads `worker.json`; if the recorded pid is
//! alive with the same start time it is adopted: the log is followed again (its tail re-read
//! for the latest step), the progress file polled, and the pid watched for its end. An adopted
//! worker is not the agent's child, so its exit status is unknown; the coordinator infers it
//! from the other ranks (a synchronous job's ranks finish together).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pb::agent_message::Body as ToCoordinator;
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::fencing::store::SharedFencing;
use crate::fencing::Refusal;
use crate::Outbox;

/// How often a worker's log file is read for new output.
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(20);
/// How often an adopted worker (not this agent's child) is checked for being gone.
const ADOPTED_EXIT_POLL: Duration = Duration::from_millis(200);
/// How much of an adopted worker's log is read again for its latest step.
const ADOPT_LOG_TAIL_BYTES: u64 = 64 * 1024;
/// Worker logs kept in `<state_dir>/logs` (older ones are removed at each launch).
const KEEP_LOGS: usize = 8;

/// A command for the supervisor.
#[derive(Debug)]
pub enum WorkerCommand {
    Launch(pb::Launch),
    Stop(pb::Stop),
    /// Stop everything: the node was fenced.
    Fence(pb::Fence),
    /// A coordinator of this term spoke: older terms are refused from now on. (The session
    /// records its welcomes in the shared fencing state itself, before any command follows.)
    Term(u64),
}

/// What the agent records about its running worker in `<state_dir>/worker.json`, so operators
/// (and a restarted agent) can find the process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub job_id: String,
    pub generation: u64,
    pub pid: u32,
    pub node_rank: u32,
    /// Where the worker's stdout and stderr go; the agent follows the file, so the worker
    /// never writes into a pipe that an agent restart would break.
    #[serde(default)]
    pub log_file: PathBuf,
    #[serde(default)]
    pub progress_file: PathBuf,
    #[serde(default)]
    pub progress_regex: String,
    #[serde(default)]
    pub grace_ms: u64,
    /// The leader's start time (clock ticks after boot, /proc/PID/stat field 22): a restarted
    /// agent adopts the pid only if it is still the same process, not a reused pid.
    #[serde(default)]
    pub start_ticks: u64,
}

/// The worker's status, as the session reports it in hello.
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    pub record: Option<WorkerRecord>,
    pub last_step: u64,
}

struct Running {
    record: WorkerRecord,
    /// Read once more at exit, so the last step written before the exit is not missed.
    progress_file: PathBuf,
    progress: ProgressReporter,
    stop_requested: Arc<AtomicBool>,
    /// The exit status; `None` for an adopted worker (not this agent's child: the status
    /// cannot be known, only that it is gone).
    exited: oneshot::Receiver<Option<std::process::ExitStatus>>,
    grace: Duration,
    /// Set once the worker is gone, so its log follower reads to the end and stops.
    done: Arc<WorkerGone>,
    /// The log follower: awaited at exit, so the last steps the worker printed are reported
    /// before its exit is.
    follower: tokio::task::JoinHandle<()>,
}

/// Runs the supervisor until the command channel closes.
pub struct Supervisor {
    outbox: Outbox,
    node_id: String,
    advertise_address: String,
    state_dir: PathBuf,
    progress_poll: Duration,
    running: Option<Running>,
    /// Highest coordinator term and generation per job seen (durable), shared with the
    /// session: older commands are refused.
    fencing: SharedFencing,
    snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
    /// Runs the operator's `on-fence` script (if it exists) once the workers are stopped.
    on_fence: Option<(crate::scripts::ScriptRunner, u64)>,
}

impl Supervisor {
    /// Runs `on-fence` from `runner`'s directory with `timeout_ms` whenever the node is fenced.
    pub fn with_on_fence(
        mut self,
        runner: crate::scripts::ScriptRunner,
        timeout_ms: u64,
    ) -> Supervisor {
        self.on_fence = Some((runner, timeout_ms));
        self
    }

    pub fn new(
        outbox: Outbox,
        node_id: String,
        advertise_address: String,
        state_dir: PathBuf,
        progress_poll: Duration,
        snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
    ) -> Supervisor {
        Supervisor {
            outbox,
            node_id,
            advertise_address,
            progress_poll,
            running: None,
            fencing: SharedFencing::load(&state_dir),
            state_dir,
            snapshot,
            on_fence: None,
        }
    }

    /// The fencing state (loaded from `state_dir`), for the session to decide through.
    pub fn fencing(&self) -> SharedFencing {
        self.fencing.clone()
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WorkerCommand>) {
        loop {
            let exited = async {
                match self.running.as_mut() {
                    Some(r) => (&mut r.exited).await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => {
                        // The agent is shutting down: workers keep running (a restarted agent
                        // finds them through worker.json).
                        return;
                    }
                },
                status = exited => self.on_exit(status).await,
            }
        }
    }

    async fn handle(&mut self, command: WorkerCommand) {
        let verdict = self.fencing.decide(|fencing| match &command {
            WorkerCommand::Launch(l) => fencing.admit_launch(&l.job_id, l.generation, l.term),
            WorkerCommand::Stop(s) => fencing.admit_stop(&s.job_id, s.generation, s.term),
            WorkerCommand::Fence(f) => fencing.observe(f.term).map_err(Refusal::from),
            WorkerCommand::Term(t) => fencing.observe(*t).map_err(Refusal::from),
        });
        match verdict {
            Ok(()) => {}
            Err(Refusal::OlderTerm(older)) => {
                tracing::warn!(
                    term = older.term,
                    current = older.current,
                    "refused a command of an older coordinator term"
                );
                return;
            }
            Err(Refusal::StaleGeneration {
                job,
                generation,
                seen,
            }) => {
                tracing::warn!(
                    job,
                    generation,
                    seen,
                    "refused launch of a stale generation"
                );
                return;
            }
        }
        match command {
            WorkerCommand::Term(_) => {}
            WorkerCommand::Launch(launch) => {
                self.stop_current("superseded by a new generation").await;
                self.launch(launch);
            }
            WorkerCommand::Stop(stop) => {
                let matches = self.running.as_ref().is_some_and(|r| {
                    r.record.job_id == stop.job_id && r.record.generation <= stop.generation
                });
                if matches {
                    if let Some(r) = self.running.as_mut() {
                        r.grace = Duration::from_millis(stop.grace_ms);
                    }
                    self.stop_current(&stop.reason).await;
                }
            }
            WorkerCommand::Fence(fence) => {
                tracing::warn!("node fenced: {}", fence.reason);
                self.stop_current("node fenced").await;
                self.run_on_fence(&fence);
            }
        }
    }

    /// Starts `on-fence` in the background (it may power things off or drain; the supervisor
    /// must stay responsive meanwhile) and reports its result as command `on-fence`.
    fn run_on_fence(&self, fence: &pb::Fence) {
        let Some((runner, timeout_ms)) = self.on_fence.clone() else {
            return;
        };
        if !runner
            .dir
            .as_ref()
            .is_some_and(|d| d.join("on-fence").is_file())
        {
            return;
        }
        let request = pb::RunScript {
            command_id: "on-fence".into(),
            script: "on-fence".into(),
            args: Vec::new(),
            timeout_ms,
            env: [("HOLDFAST_FENCE_REASON".to_string(), fence.reason.clone())].into(),
            term: fence.term,
        };
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let result = runner.run(&request).await;
            tracing::info!(ok = result.ok, "on-fence: {}", result.message);
            let _ = outbox.send(pb::AgentMessage {
                body: Some(ToCoordinator::CommandResult(result)),
            });
        });
    }

    fn launch(&mut self, launch: pb::Launch) {
        let vars = placeholders(&launch, &self.node_id, &self.advertise_address);
        let argv: Vec<String> = launch
            .command
            .iter()
            .map(|a| substitute(a, &vars))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            self.report_exit(&launch.job_id, launch.generation, None, None, false);
            return;
        };
        let progress_file = self.state_dir.join(format!(
            "progress-{}-g{}",
            sanitize(&launch.job_id),
            launch.generation
        ));
        let log_file = self.state_dir.join("logs").join(format!(
            "{}-g{}-r{}.log",
            sanitize(&launch.job_id),
            launch.generation,
            launch.node_rank
        ));
        let (stdout, stderr) = match open_log(&log_file) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(
                    job = launch.job_id,
                    "cannot open worker log {}: {e}",
                    log_file.display()
                );
                self.report_exit(&launch.job_id, launch.generation, Some(127), None, false);
                return;
            }
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(launch.env.iter())
            .envs(
                vars.iter()
                    .map(|(k, v)| (format!("HOLDFAST_{}", k.to_uppercase()), v.clone())),
            )
            .env("HOLDFAST_PROGRESS_FILE", &progress_file)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(job = launch.job_id, "cannot start worker {program:?}: {e}");
                self.report_exit(&launch.job_id, launch.generation, Some(127), None, false);
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let record = WorkerRecord {
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            pid,
            node_rank: launch.node_rank,
            log_file,
            progress_file,
            progress_regex: launch.progress_regex.clone(),
            grace_ms: launch.stop_grace_ms.max(100),
            start_ticks: start_ticks(pid).unwrap_or(0),
        };
        tracing::info!(
            job = launch.job_id,
            generation = launch.generation,
            rank = launch.node_rank,
            pid,
            "worker started: {}",
            argv.join(" ")
        );
        self.write_record(Some(&record));
        self.send(ToCoordinator::WorkerEvent(pb::WorkerEvent {
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted { pid })),
            at_unix_ms: now_ms(),
        }));
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    let _ = exit_tx.send(Some(status));
                }
                Err(e) => tracing::error!("waiting for worker {pid} failed: {e}"),
            }
        });
        self.follow(record, exit_rx, 0);
    }

    /// Watches a running worker, just launched or adopted after an agent restart: follows its
    /// log from `offset` and its progress file, and makes it the running worker.
    fn follow(
        &mut self,
        record: WorkerRecord,
        exited: oneshot::Receiver<Option<std::process::ExitStatus>>,
        offset: u64,
    ) {
        let regex = Regex::new(&record.progress_regex)
            .or_else(|_| Regex::new(holdfast_core::DEFAULT_PROGRESS_REGEX))
            .ok();
        let progress = ProgressReporter {
            outbox: self.outbox.clone(),
            job_id: record.job_id.clone(),
            generation: record.generation,
            last: Arc::new(std::sync::Mutex::new(0)),
            snapshot: self.snapshot.clone(),
        };
        let done = Arc::new(WorkerGone::default());
        let prefix = format!(
            "[{} g{} r{}]",
            record.job_id, record.generation, record.node_rank
        );
        let follower = tokio::spawn(follow_log(
            record.log_file.clone(),
            offset,
            prefix,
            regex,
            progress.clone(),
            done.clone(),
        ));
        tokio::spawn(poll_progress_file(
            record.progress_file.clone(),
            self.progress_poll,
            progress.clone(),
        ));
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.record = Some(record.clone());
            snap.last_step = 0;
        }
        self.running = Some(Running {
            progress_file: record.progress_file.clone(),
            grace: Duration::from_millis(record.grace_ms.max(100)),
            record,
            progress,
            stop_requested: Arc::new(AtomicBool::new(false)),
            exited,
            done,
            follower,
        });
    }

    /// After an agent restart: takes over the worker recorded in `worker.json` if it still
    /// runs (same pid, same start time), or reports that it ended while the agent was away.
    /// Called before the first session, so the first hello already reports the worker.
    pub fn adopt(&mut self) {
        let path = self.state_dir.join("worker.json");
        let record: WorkerRecord = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("ignoring unreadable {}: {e}", path.display());
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                return;
            }
        };
        self.fencing
            .decide(|f| f.observe_generation(&record.job_id, record.generation));
        let same =
            |pid: u32, ticks: u64| start_ticks(pid).is_some_and(|t| ticks == 0 || t == ticks);
        if record.pid == 0
            || record.log_file.as_os_str().is_empty()
            || !same(record.pid, record.start_ticks)
        {
            tracing::warn!(
                job = record.job_id,
                generation = record.generation,
                pid = record.pid,
                "the recorded worker ended while the agent was away"
            );
            self.write_record(None);
            self.report_exit(&record.job_id, record.generation, None, None, false);
            return;
        }
        // Output printed while the agent was away is in the log: its tail is read again (the
        // latest step is reported), then the log is followed.
        let len = std::fs::metadata(&record.log_file).map_or(0, |m| m.len());
        let offset = len.saturating_sub(ADOPT_LOG_TAIL_BYTES);
        tracing::info!(
            job = record.job_id,
            generation = record.generation,
            pid = record.pid,
            "adopted the running worker"
        );
        let (exit_tx, exit_rx) = oneshot::channel();
        let (pid, ticks) = (record.pid, record.start_ticks);
        tokio::spawn(async move {
            // Not this agent's child: it cannot be waited for, only seen gone.
            let mut interval = tokio::time::interval(ADOPTED_EXIT_POLL);
            loop {
                interval.tick().await;
                if !same(pid, ticks) {
                    let _ = exit_tx.send(None);
                    return;
                }
            }
        });
        self.follow(record, exit_rx, offset);
    }

    /// SIGCONT + SIGTERM to the group, SIGKILL after the grace, then waits for the exit.
    async fn stop_current(&mut self, reason: &str) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        running.stop_requested.store(true, Ordering::SeqCst);
        let pgid = Pid::from_raw(running.record.pid as i32);
        tracing::info!(
            job = running.record.job_id,
            generation = running.record.generation,
            pid = running.record.pid,
            "stopping worker: {reason}"
        );
        // Launchers such as torchrun run their workers in sessions of their own, out of the
        // group's reach: find them now, while they are still the leader's descendants.
        let tree = crate::proctree::descendants(running.record.pid as i32);
        // A stopped (SIGSTOP) process only acts on SIGTERM once continued.
        let _ = killpg(pgid, Signal::SIGTERM);
        crate::proctree::signal_all(&tree, Signal::SIGTERM);
        let _ = killpg(pgid, Signal::SIGCONT);
        crate::proctree::signal_all(&tree, Signal::SIGCONT);
        let status = match tokio::time::timeout(running.grace, &mut running.exited).await {
            Ok(status) => status.ok().flatten(),
            Err(_) => {
                tracing::warn!(
                    pid = running.record.pid,
                    "worker ignored SIGTERM; sending SIGKILL to its group"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                crate::proctree::signal_all(&tree, Signal::SIGKILL);
                tokio::time::timeout(Duration::from_secs(10), &mut running.exited)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
            }
        };
        // Whatever of the tree outlived its launcher would run on as an orphan.
        crate::proctree::signal_all(&tree, Signal::SIGKILL);
        self.on_exit(status).await;
    }

    async fn on_exit(&mut self, status: Option<std::process::ExitStatus>) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.done.set();
        // The follower now reads the log to its end and stops; bounded, so a huge log or a
        // stuck filesystem cannot hold the exit report back for long.
        if tokio::time::timeout(LOG_DRAIN_TIMEOUT, running.follower)
            .await
            .is_err()
        {
            tracing::warn!("worker log not drained within {LOG_DRAIN_TIMEOUT:?}");
        }
        // Whatever the leader left behind in its group goes with it.
        let _ = killpg(Pid::from_raw(running.record.pid as i32), Signal::SIGKILL);
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = status.map_or((None, None), |s| (s.code(), s.signal()));
        let stopped = running.stop_requested.load(Ordering::SeqCst);
        tracing::info!(
            job = running.record.job_id,
            generation = running.record.generation,
            ?code,
            ?signal,
            stopped_by_agent = stopped,
            "worker exited"
        );
        if let Some(step) = read_progress_file(&running.progress_file) {
            running.progress.report(step);
        }
        self.write_record(None);
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.record = None;
        }
        self.report_exit(
            &running.record.job_id,
            running.record.generation,
            code,
            signal,
            stopped,
        );
    }

    fn report_exit(
        &self,
        job_id: &str,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
        stopped: bool,
    ) {
        self.send(ToCoordinator::WorkerEvent(pb::WorkerEvent {
            job_id: job_id.to_string(),
            generation,
            kind: Some(pb::worker_event::Kind::Exited(pb::WorkerExited {
                code,
                signal,
                stopped_by_agent: stopped,
            })),
            at_unix_ms: now_ms(),
        }));
    }

    fn write_record(&self, record: Option<&WorkerRecord>) {
        let path = self.state_dir.join("worker.json");
        let result = match record {
            Some(r) => serde_json::to_vec_pretty(r)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&path, bytes)),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::warn!("cannot update {}: {e}", path.display());
        }
    }

    fn send(&self, body: ToCoordinator) {
        // The outbox outlives every session; a send fails only when the agent is shutting down.
        let _ = self.outbox.send(pb::AgentMessage { body: Some(body) });
    }
}

/// Sends a progress message whenever the step changes.
#[derive(Clone)]
struct ProgressReporter {
    outbox: Outbox,
    job_id: String,
    generation: u64,
    last: Arc<std::sync::Mutex<u64>>,
    snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
}

impl ProgressReporter {
    fn report(&self, step: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if *last == step {
            return;
        }
        *last = step;
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.last_step = step;
        }
        let _ = self.outbox.send(pb::AgentMessage {
            body: Some(ToCoordinator::Progress(pb::Progress {
                job_id: self.job_id.clone(),
                generation: self.generation,
                step,
                at_unix_ms: now_ms(),
            })),
        });
    }

    fn closed(&self) -> bool {
        self.outbox.is_closed()
    }
}

/// Longest an exit report waits for the worker's log to be read to its end.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Set when a worker is gone: its log follower then reads to the end and stops.
#[derive(Default)]
struct WorkerGone {
    gone: AtomicBool,
    wake: tokio::sync::Notify,
}

impl WorkerGone {
    fn set(&self) {
        self.gone.store(true, Ordering::SeqCst);
        // A permit is kept if the follower is not waiting yet: the wake-up is never lost.
        self.wake.notify_one();
    }

    fn is_set(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// Follows a worker's log file from `offset`: copies its lines to the agent's output and
/// reports the steps they print. Stops once the worker is `done` and the file is read to its
/// end.
async fn follow_log(
    path: PathBuf,
    offset: u64,
    prefix: String,
    regex: Option<Regex>,
    progress: ProgressReporter,
    done: Arc<WorkerGone>,
) {
    use tokio::io::AsyncSeekExt;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("cannot follow worker log {}: {e}", path.display());
            return;
        }
    };
    if offset > 0 && file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return;
    }
    // Adopted mid-file: the first partial line is not a line.
    let mut skip_partial = offset > 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let finished = done.is_set();
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("worker log unreadable: {e}");
                return;
            }
        };
        if n == 0 {
            if finished || progress.closed() {
                return;
            }
            // New output is looked for every poll, and at once when the worker is gone.
            tokio::select! {
                _ = tokio::time::sleep(LOG_FOLLOW_POLL) => {}
                _ = done.wake.notified() => {}
            }
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if std::mem::take(&mut skip_partial) {
                continue;
            }
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            println!("{prefix} {line}");
            if let Some(step) = regex.as_ref().and_then(|re| parse_step(re, &line)) {
                progress.report(step);
            }
        }
        // A line longer than this is cut rather than held for ever.
        if pending.len() > 1 << 20 {
            pending.clear();
        }
    }
}

/// Opens (appending) a worker log for stdout and stderr, creating its directory and keeping
/// only the most recent [`KEEP_LOGS`] logs there.
fn open_log(path: &std::path::Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        let mut logs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        logs.sort();
        let excess = logs.len().saturating_sub(KEEP_LOGS - 1);
        for (_, old) in logs.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// A live (not zombie) process's start time in clock ticks after boot, from /proc/PID/stat.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Reads `HOLDFAST_PROGRESS_FILE` (a step number, written by the job) until the worker is gone.
async fn poll_progress_file(path: PathBuf, every: Duration, progress: ProgressReporter) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        if progress.closed() {
            return;
        }
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                if let Some(step) = text
                    .split_whitespace()
                    .last()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    progress.report(step);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("progress file {} unreadable: {e}", path.display()),
        }
        if progress
            .snapshot
            .lock()
            .map(|s| {
                s.record
                    .as_ref()
                    .is_none_or(|r| r.generation != progress.generation)
            })
            .unwrap_or(true)
        {
            let _ = tokio::fs::remove_file(&path).await;
            return;
        }
    }
}

/// The step a job wrote to its progress file (the last number in it), if any.
fn read_progress_file(path: &std::path::Path) -> Option<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.split_whitespace().last()?.parse().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::debug!("progress file {} unreadable: {e}", path.display());
            None
        }
    }
}

/// The step in a line of output, per the job's progress regex (first capture group).
pub fn parse_step(regex: &Regex, line: &str) -> Option<u64> {
    regex.captures(line)?.get(1)?.as_str().parse().ok()
}

/// The values a launch makes available as `{name}` placeholders and `HOLDFAST_NAME` variables.
pub fn placeholders(
    launch: &pb::Launch,
    node_id: &str,
    local_addr: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", launch.job_id.clone()),
        ("node_id", node_id.to_string()),
        ("node_rank", launch.node_rank.to_string()),
        ("nnodes", launch.nnodes.to_string()),
        ("master_addr", launch.master_addr.clone()),
        ("master_port", launch.master_port.to_string()),
        (
            "rdzv_endpoint",
            format!("{}:{}", launch.master_addr, launch.master_port),
        ),
        ("rdzv_id", launch.rdzv_id.clone()),
        ("generation", launch.generation.to_string()),
        ("resume_from", launch.resume_from.clone()),
        ("resume_step", launch.resume_step.to_string()),
        ("checkpoint_uri", launch.checkpoint_uri.clone()),
        ("local_addr", local_addr.to_string()),
    ]
}

/// Replaces every `{name}` of `vars` in `arg`.
pub fn substitute(arg: &str, vars: &[(&'static str, String)]) -> String {
    let mut out = arg.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_regex_finds_steps() {
        let re = Regex::new(holdfast_core::DEFAULT_PROGRESS_REGEX).unwrap();
        assert_eq!(parse_step(&re, "step 12 loss 0.5"), Some(12));
        assert_eq!(parse_step(&re, "[rank0] Step: 7"), Some(7));
        assert_eq!(parse_step(&re, "global_step=99"), None);
        assert_eq!(parse_step(&re, "step=99"), Some(99));
        assert_eq!(parse_step(&re, "stepping up"), None);
    }

    fn supervisor(
        state_dir: &std::path::Path,
    ) -> (Supervisor, mpsc::UnboundedReceiver<pb::AgentMessage>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(
            outbox,
            "n".into(),
            "127.0.0.1".into(),
            state_dir.to_path_buf(),
            Duration::from_millis(100),
            Default::default(),
        );
        (supervisor, rx)
    }

    #[test]
    fn the_fencing_state_survives_an_agent_restart() {
        let dir = std::env::temp_dir().join(format!("holdfast-fencing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SharedFencing::load(&dir)
            .decide(|f| f.admit_launch("job-1", 3, 7))
            .unwrap();
        // A supervisor started on that directory refuses what an older coordinator sends.
        let (supervisor, _rx) = supervisor(&dir);
        assert_eq!(supervisor.fencing().term(), 7);
        assert!(supervisor.fencing().admit_term(6).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn commands_of_an_older_term_or_generation_are_refused_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("holdfast-fencing-cmd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SharedFencing::load(&dir)
            .decide(|f| f.admit_launch("j", 2, 5))
            .unwrap();
        let (mut supervisor, mut rx) = supervisor(&dir);
        let launch = |term, generation| pb::Launch {
            job_id: "j".into(),
            generation,
            term,
            command: vec!["true".into()],
            ..Default::default()
        };
        // An older coordinator term, then an older generation: nothing starts.
        supervisor.handle(WorkerCommand::Launch(launch(4, 9))).await;
        supervisor.handle(WorkerCommand::Launch(launch(5, 2))).await;
        assert!(supervisor.running.is_none());
        assert!(rx.try_recv().is_err());
        // A stop or a fence of an older term is refused too.
        supervisor
            .handle(WorkerCommand::Stop(pb::Stop {
                job_id: "j".into(),
                generation: 7,
                term: 4,
                ..Default::default()
            }))
            .await;
        supervisor
            .handle(WorkerCommand::Fence(pb::Fence {
                term: 4,
                ..Default::default()
            }))
            .await;
        let on_disk = crate::fencing::store::load(&dir);
        assert_eq!((on_disk.term(), on_disk.generation("j")), (5, 2));
        // The current term and a new generation start a worker.
        supervisor.handle(WorkerCommand::Launch(launch(6, 3))).await;
        assert!(supervisor.running.is_some());
        let on_disk = crate::fencing::store::load(&dir);
        assert_eq!((on_disk.term(), on_disk.generation("j")), (6, 3));
        assert_eq!(supervisor.fencing().term(), 6);
        supervisor.stop_current("test over").await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn placeholders_are_substituted() {
        let launch = pb::Launch {
            job_id: "j".into(),
            generation: 3,
            node_rank: 1,
            nnodes: 2,
            master_addr: "10.0.0.1".into(),
            master_port: 29501,
            rdzv_id: "j-g3".into(),
            ..Default::default()
        };
        let vars = placeholders(&launch, "n1", "10.0.0.2");
        assert_eq!(
            substitute(
                "--rdzv-endpoint={rdzv_endpoint} --node-rank={node_rank} --local-addr={local_addr}",
                &vars
            ),
            "--rdzv-endpoint=10.0.0.1:29501 --node-rank=1 --local-addr=10.0.0.2"
        );
        assert_eq!(substitute("{unknown}", &vars), "{unknown}");
    }
}
