//! The worker supervisor: runs the job's command as its own process group, reports its start,
//! progress and exit, and stops it with SIGTERM → grace → SIGKILL of the whole group.
//!
//! Commands arrive in order on one channel and are carried out one at a time, so a `Launch`
//! of generation g+1 always stops generation g first. Generations only go up: a command for an
//! older generation (a zombie coordinator's, or a late one) is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pb::agent_message::Body as ToCoordinator;
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::{now_ms, Outbox};

/// A command for the supervisor.
#[derive(Debug)]
pub enum WorkerCommand {
    Launch(pb::Launch),
    Stop(pb::Stop),
    /// Stop everything: the node was fenced.
    Fence(pb::Fence),
    /// A coordinator of this term welcomed the agent: older terms are refused from now on.
    Term(u64),
}

/// What the agent must not forget across its own restarts to refuse zombie commands: the
/// highest coordinator term and the highest generation per job it has seen. Kept in
/// `<state_dir>/fencing.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencingState {
    pub term: u64,
    pub generations: HashMap<String, u64>,
}

impl FencingState {
    pub fn path(state_dir: &std::path::Path) -> PathBuf {
        state_dir.join("fencing.json")
    }

    /// Reads the file; a missing one is a fresh agent, an unreadable one is logged and treated
    /// as fresh (the coordinator's own term check still guards the new generation).
    pub fn load(state_dir: &std::path::Path) -> FencingState {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is unreadable ({e}); starting with no term",
                    path.display()
                );
                FencingState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FencingState::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; starting with no term", path.display());
                FencingState::default()
            }
        }
    }

    /// Writes the file atomically (temp file, then rename).
    pub fn save(&self, state_dir: &std::path::Path) {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// What the agent records about its running worker in `<state_dir>/worker.json`, so operators
/// (and a restarted agent) can find the process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub job_id: String,
    pub generation: u64,
    pub pid: u32,
    pub node_rank: u32,
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
    exited: oneshot::Receiver<std::process::ExitStatus>,
    grace: Duration,
}

/// Runs the supervisor until the command channel closes.
pub struct Supervisor {
    outbox: Outbox,
    node_id: String,
    advertise_address: String,
    state_dir: PathBuf,
    progress_poll: Duration,
    running: Option<Running>,
    /// Highest coordinator term and generation per job seen (durable): older commands are
    /// refused.
    fencing: FencingState,
    /// The term, shared with the session so a welcome from an older coordinator is refused.
    known_term: Arc<std::sync::atomic::AtomicU64>,
    snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
}

impl Supervisor {
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
            state_dir,
            progress_poll,
            running: None,
            known_term: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            fencing: FencingState::default(),
            snapshot,
        }
        .with_fencing_from_disk()
    }

    fn with_fencing_from_disk(mut self) -> Supervisor {
        self.fencing = FencingState::load(&self.state_dir);
        self.known_term.store(self.fencing.term, Ordering::SeqCst);
        self
    }

    /// The highest coordinator term seen, kept up to date by the supervisor.
    pub fn known_term(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.known_term.clone()
    }

    fn adopt_term(&mut self, term: u64) {
        if term > self.fencing.term {
            self.fencing.term = term;
            self.known_term.store(term, Ordering::SeqCst);
            self.fencing.save(&self.state_dir);
        }
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WorkerCommand>) {
        loop {
            let exited = async {
                match self.running.as_mut() {
                    Some(r) => (&mut r.exited).await.ok(),
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
                status = exited => self.on_exit(status),
            }
        }
    }

    async fn handle(&mut self, command: WorkerCommand) {
        let term = match &command {
            WorkerCommand::Launch(l) => l.term,
            WorkerCommand::Stop(s) => s.term,
            WorkerCommand::Fence(f) => f.term,
            WorkerCommand::Term(t) => *t,
        };
        if term < self.fencing.term {
            tracing::warn!(
                term,
                current = self.fencing.term,
                "refused a command of an older coordinator term"
            );
            return;
        }
        self.adopt_term(term);
        match command {
            WorkerCommand::Term(_) => {}
            WorkerCommand::Launch(launch) => {
                let seen = self
                    .fencing
                    .generations
                    .get(&launch.job_id)
                    .copied()
                    .unwrap_or(0);
                if launch.generation <= seen {
                    tracing::warn!(
                        job = launch.job_id,
                        generation = launch.generation,
                        seen,
                        "refused launch of a stale generation"
                    );
                    return;
                }
                self.fencing
                    .generations
                    .insert(launch.job_id.clone(), launch.generation);
                self.fencing.save(&self.state_dir);
                self.stop_current("superseded by a new generation").await;
                self.launch(launch);
            }
            WorkerCommand::Stop(stop) => {
                let matches = self.running.as_ref().is_some_and(|r| {
                    r.record.job_id == stop.job_id && r.record.generation <= stop.generation
                });
                let seen = self
                    .fencing
                    .generations
                    .entry(stop.job_id.clone())
                    .or_insert(0);
                if stop.generation > *seen {
                    *seen = stop.generation;
                    self.fencing.save(&self.state_dir);
                }
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
            }
        }
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let regex = Regex::new(&launch.progress_regex)
            .or_else(|_| Regex::new(crate::DEFAULT_PROGRESS_REGEX))
            .ok();
        let progress = ProgressReporter {
            outbox: self.outbox.clone(),
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            last: Arc::new(std::sync::Mutex::new(0)),
            snapshot: self.snapshot.clone(),
        };
        let prefix = format!(
            "[{} g{} r{}]",
            launch.job_id, launch.generation, launch.node_rank
        );
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, prefix.clone(), regex.clone(), progress.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, prefix, regex, progress.clone()));
        }
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => {
                    let _ = exit_tx.send(status);
                }
                Err(e) => tracing::error!("waiting for worker {pid} failed: {e}"),
            }
        });
        tokio::spawn(poll_progress_file(
            progress_file.clone(),
            self.progress_poll,
            progress.clone(),
        ));
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.record = Some(record.clone());
            snap.last_step = 0;
        }
        self.running = Some(Running {
            record,
            progress_file,
            progress,
            stop_requested: Arc::new(AtomicBool::new(false)),
            exited: exit_rx,
            grace: Duration::from_millis(launch.stop_grace_ms.max(100)),
        });
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
        // A stopped (SIGSTOP) process only acts on SIGTERM once continued.
        let _ = killpg(pgid, Signal::SIGTERM);
        let _ = killpg(pgid, Signal::SIGCONT);
        let status = match tokio::time::timeout(running.grace, &mut running.exited).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(
                    pid = running.record.pid,
                    "worker ignored SIGTERM; sending SIGKILL to its group"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                tokio::time::timeout(Duration::from_secs(10), &mut running.exited)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        self.on_exit(status);
    }

    fn on_exit(&mut self, status: Option<std::process::ExitStatus>) {
        let Some(running) = self.running.take() else {
            return;
        };
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

/// Copies a worker's output lines to the agent's log and reports the steps it prints.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    out: R,
    prefix: String,
    regex: Option<Regex>,
    progress: ProgressReporter,
) {
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                println!("{prefix} {line}");
                if let Some(step) = regex.as_ref().and_then(|re| parse_step(re, &line)) {
                    progress.report(step);
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("worker output unreadable: {e}");
                return;
            }
        }
    }
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
        let re = Regex::new(crate::DEFAULT_PROGRESS_REGEX).unwrap();
        assert_eq!(parse_step(&re, "step 12 loss 0.5"), Some(12));
        assert_eq!(parse_step(&re, "[rank0] Step: 7"), Some(7));
        assert_eq!(parse_step(&re, "global_step=99"), None);
        assert_eq!(parse_step(&re, "step=99"), Some(99));
        assert_eq!(parse_step(&re, "stepping up"), None);
    }

    #[test]
    fn the_fencing_state_survives_an_agent_restart() {
        let dir = std::env::temp_dir().join(format!("holdfast-fencing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(FencingState::load(&dir), FencingState::default());
        let mut state = FencingState {
            term: 7,
            ..Default::default()
        };
        state.generations.insert("job-1".into(), 3);
        state.save(&dir);
        assert_eq!(FencingState::load(&dir), state);
        // A supervisor started on that directory refuses what an older coordinator sends.
        let (outbox, _rx) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = Supervisor::new(
            outbox,
            "n".into(),
            "127.0.0.1".into(),
            dir.clone(),
            Duration::from_millis(100),
            Default::default(),
        );
        assert_eq!(supervisor.known_term().load(Ordering::SeqCst), 7);
        std::fs::write(FencingState::path(&dir), b"not json").unwrap();
        assert_eq!(FencingState::load(&dir), FencingState::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn commands_of_an_older_term_or_generation_are_refused_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("holdfast-fencing-cmd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = FencingState {
            term: 5,
            ..Default::default()
        };
        state.generations.insert("j".into(), 2);
        state.save(&dir);
        let (outbox, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut supervisor = Supervisor::new(
            outbox,
            "n".into(),
            "127.0.0.1".into(),
            dir.clone(),
            Duration::from_millis(100),
            Default::default(),
        );
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
        // The current term and a new generation start a worker.
        supervisor.handle(WorkerCommand::Launch(launch(6, 3))).await;
        assert!(supervisor.running.is_some());
        assert_eq!(FencingState::load(&dir).term, 6);
        assert_eq!(FencingState::load(&dir).generations["j"], 3);
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
