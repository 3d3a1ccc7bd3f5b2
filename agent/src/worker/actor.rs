//! The supervisor's command loop: every command passes the fencing check, then a launch stops
//! the current worker and starts the next, a stop or a fence stops it (SIGTERM, grace,
//! SIGKILL of the whole group), and a worker's exit is reported once its log is read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pb::agent_message::Body as ToCoordinator;
use tokio::sync::{mpsc, oneshot};

use super::follow::{read_progress_file, ProgressReporter, WorkerGone};
use super::{record, WorkerCommand, WorkerRecord, WorkerSnapshot};
use crate::fencing::store::SharedFencing;
use crate::fencing::Refusal;
use crate::Outbox;

/// Longest an exit report waits for the worker's log to be read to its end.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The worker the supervisor runs (or adopted), from its start until its exit is reported.
pub(super) struct Running {
    pub(super) record: WorkerRecord,
    /// Read once more at exit, so the last step written before the exit is not missed.
    pub(super) progress_file: PathBuf,
    pub(super) progress: ProgressReporter,
    pub(super) stop_requested: Arc<AtomicBool>,
    /// The exit status; `None` for an adopted worker (not this agent's child: the status
    /// cannot be known, only that it is gone).
    pub(super) exited: oneshot::Receiver<Option<std::process::ExitStatus>>,
    pub(super) grace: Duration,
    /// Set once the worker is gone, so its log follower reads to the end and stops.
    pub(super) done: Arc<WorkerGone>,
    /// The log follower: awaited at exit, so the last steps the worker printed are reported
    /// before its exit is.
    pub(super) follower: tokio::task::JoinHandle<()>,
}

/// Runs the supervisor until the command channel closes.
pub struct Supervisor {
    pub(super) outbox: Outbox,
    pub(super) node_id: String,
    pub(super) advertise_address: String,
    pub(super) state_dir: PathBuf,
    pub(super) progress_poll: Duration,
    pub(super) running: Option<Running>,
    /// Highest coordinator term and generation per job seen (durable), shared with the
    /// session: older commands are refused.
    pub(super) fencing: SharedFencing,
    pub(super) snapshot: Arc<std::sync::Mutex<WorkerSnapshot>>,
    /// Runs the operator's `on-fence` script (if it exists) once the workers are stopped.
    on_fence: Option<(crate::scripts::ScriptRunner, u64)>,
    /// The `py-spy` that dumps a stalled worker's stacks; `None`: stacks are not available.
    py_spy: Option<PathBuf>,
    /// Interpreters prepared for the next launch of a job that asked for warm imports.
    pub(super) standby: Option<super::standby::Standby>,
    /// The standbys the agent's config keeps whenever no worker runs (`standby_python`).
    configured_standby: Option<super::StandbyKey>,
    /// Where jobs keep their memory tier (`memory_tier_dir`); empty = off.
    pub(super) memory_dir: PathBuf,
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
            py_spy: None,
            standby: None,
            configured_standby: None,
            memory_dir: PathBuf::new(),
        }
    }

    /// Gives each job's workers a memory-tier directory under `root` (`HOLDFAST_MEMORY_DIR`)
    /// and reports what they keep there; an empty `root` keeps the tier off.
    pub fn with_memory_dir(mut self, root: PathBuf) -> Supervisor {
        self.memory_dir = root;
        self
    }

    /// Dumps stalled workers' stacks with `py_spy` (none: stacks are not available).
    pub fn with_py_spy(mut self, py_spy: Option<PathBuf>) -> Supervisor {
        self.py_spy = py_spy;
        self
    }

    /// Keeps the standbys `key` describes whenever no worker runs (the agent's config).
    pub fn with_standby(mut self, key: Option<super::StandbyKey>) -> Supervisor {
        self.configured_standby = key;
        self
    }

    /// Starts the configured standbys if nothing runs and none wait.
    fn refill_standby(&mut self) {
        let Some(key) = self.configured_standby.clone() else {
            return;
        };
        if self.running.is_some() || self.standby.is_some() {
            return;
        }
        match super::standby::Standby::start(key, &self.state_dir) {
            Ok(standby) => self.standby = Some(standby),
            Err(e) => tracing::warn!("cannot start the configured standby interpreters: {e}"),
        }
    }

    /// The fencing state (loaded from `state_dir`), for the session to decide through.
    pub fn fencing(&self) -> SharedFencing {
        self.fencing.clone()
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<WorkerCommand>) {
        self.refill_standby();
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
            WorkerCommand::DumpStacks(d) => fencing.observe(d.term).map_err(Refusal::from),
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
            WorkerCommand::DumpStacks(d) => self.dump_stacks(d).await,
            WorkerCommand::Launch(launch) => {
                if launch.reform && self.reform(&launch) {
                    return;
                }
                self.stop_current("superseded by a new generation").await;
                self.launch(*launch).await;
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
                self.discard_standby();
                // A fenced node's copies no longer count anywhere: give their memory back.
                super::memtier::clear(&self.memory_dir);
                self.run_on_fence(&fence);
            }
        }
    }

    /// Answers a `DumpStacks` with the running worker's stacks, if it is the stalled one. The
    /// supervisor waits for it (bounded): the stop that follows must not kill the worker first.
    async fn dump_stacks(&mut self, d: pb::DumpStacks) {
        let leader = self.running.as_ref().and_then(|r| {
            let ours = r.record.job_id == d.job_id && r.record.generation == d.generation;
            ours.then(|| i32::try_from(r.record.pid).ok()).flatten()
        });
        let text = match leader {
            Some(pid) => super::stacks::dump(self.py_spy.as_deref(), pid).await,
            None => "stacks not available: the worker is gone".into(),
        };
        let _ = self.outbox.send(pb::AgentMessage {
            body: Some(ToCoordinator::StackDump(pb::StackDump {
                incident_id: d.incident_id,
                text,
            })),
        });
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
        let tree: Vec<_> = running
            .record
            .processes()
            .into_iter()
            .filter_map(|(pid, _)| i32::try_from(pid).ok())
            .flat_map(crate::proctree::descendants)
            .collect();
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
        if !stopped && status.is_some_and(|s| s.success()) {
            // The job is done on this node: no relaunch will come for the standbys.
            self.discard_standby();
            self.refill_standby();
        }
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
        // What the job's memory tier holds here now, too: its last save may not be told yet.
        running.progress.look_at_memory_tier();
        record::write(&self.state_dir, None);
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

    pub(super) fn report_exit(
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

    pub(super) fn send(&self, body: ToCoordinator) {
        // The outbox outlives every session; a send fails only when the agent is shutting down.
        let _ = self.outbox.send(pb::AgentMessage { body: Some(body) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = crate::testdir::Scratch::new("fencing");
        SharedFencing::load(&dir)
            .decide(|f| f.admit_launch("job-1", 3, 7))
            .unwrap();
        // A supervisor started on that directory refuses what an older coordinator sends.
        let (supervisor, _rx) = supervisor(&dir);
        assert_eq!(supervisor.fencing().term(), 7);
        assert!(supervisor.fencing().admit_term(6).is_err());
    }

    #[tokio::test]
    async fn commands_of_an_older_term_or_generation_are_refused_after_a_restart() {
        let dir = crate::testdir::Scratch::new("fencing-cmd");
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
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(4, 9))))
            .await;
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(5, 2))))
            .await;
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
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(6, 3))))
            .await;
        assert!(supervisor.running.is_some());
        let on_disk = crate::fencing::store::load(&dir);
        assert_eq!((on_disk.term(), on_disk.generation("j")), (6, 3));
        assert_eq!(supervisor.fencing().term(), 6);
        supervisor.stop_current("test over").await;
    }

    /// A worker that could not use the memory tier leaves the reason before its first step;
    /// that step's progress already carries it (the coordinator judges the recovery by it),
    /// and a marker left by another generation is not sent.
    #[tokio::test]
    async fn the_first_progress_after_a_memory_tier_fallback_says_why() {
        let dir = crate::testdir::Scratch::new("fallback-progress");
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let (supervisor, mut rx) = supervisor(&dir.join("state"));
        let mut supervisor = supervisor.with_memory_dir(dir.join("memory"));
        let launch = |generation: u64, marker_generation: u64| {
            pb::Launch {
            job_id: "j".into(),
            generation,
            term: 1,
            progress_regex: holdfast_core::DEFAULT_PROGRESS_REGEX.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "mkdir -p \"$HOLDFAST_MEMORY_DIR\" && printf '{{\"generation\": {marker_generation}, \
                     \"reason\": \"step 9: corrupt\"}}' > \"$HOLDFAST_MEMORY_DIR/FALLBACK.json\" \
                     && echo 'step 5' && sleep 30"
                ),
            ],
            ..Default::default()
        }
        };
        for (generation, marker_generation, said) in [(2, 1, ""), (3, 3, "step 9: corrupt")] {
            let command = WorkerCommand::Launch(Box::new(launch(generation, marker_generation)));
            supervisor.handle(command).await;
            let progress = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match rx.recv().await.and_then(|m| m.body) {
                        Some(ToCoordinator::Progress(p)) if p.generation == generation => return p,
                        Some(_) => {}
                        None => panic!("the outbox closed"),
                    }
                }
            })
            .await
            .expect("the worker's first step is reported");
            assert_eq!((progress.step, progress.state_fallback.as_str()), (5, said));
        }
        supervisor.stop_current("test over").await;
    }

    fn native_launch(script: &str) -> pb::Launch {
        pb::Launch {
            job_id: "native".into(),
            generation: 1,
            term: 1,
            node_rank: 1,
            nnodes: 2,
            nproc_per_node: 2,
            master_addr: "10.0.0.1".into(),
            master_port: 29555,
            rdzv_id: "native-g1".into(),
            stop_grace_ms: 2000,
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    /// Waits (bounded) until the worker's log holds `lines` lines that start with `prefix`.
    async fn log_lines(log: &std::path::Path, prefix: &str, lines: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(String::from)
                .collect();
            if found.len() >= lines || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn worker_exit(rx: &mut mpsc::UnboundedReceiver<pb::AgentMessage>) -> Option<pb::WorkerExited> {
        std::iter::from_fn(|| rx.try_recv().ok()).find_map(|m| match m.body {
            Some(ToCoordinator::WorkerEvent(pb::WorkerEvent {
                kind: Some(pb::worker_event::Kind::Exited(e)),
                ..
            })) => Some(e),
            _ => None,
        })
    }

    #[tokio::test]
    async fn the_native_launcher_starts_every_local_rank_in_one_group_and_stops_them_all() {
        let dir = crate::testdir::Scratch::new("native");
        let (mut supervisor, mut rx) = supervisor(&dir);
        let script = "echo \"rank $RANK/$WORLD_SIZE local $LOCAL_RANK/$LOCAL_WORLD_SIZE \
                      group $GROUP_RANK at $MASTER_ADDR:$MASTER_PORT $TORCHELASTIC_RUN_ID\"; \
                      exec sleep 30";
        supervisor
            .handle(WorkerCommand::Launch(Box::new(native_launch(script))))
            .await;
        let record = supervisor.running.as_ref().unwrap().record.clone();
        assert_eq!(record.ranks.len(), 2);
        let mut lines = log_lines(&record.log_file, "rank ", 2).await;
        lines.sort();
        assert_eq!(
            lines,
            [
                "rank 2/4 local 0/2 group 1 at 10.0.0.1:29555 native-g1",
                "rank 3/4 local 1/2 group 1 at 10.0.0.1:29555 native-g1",
            ]
        );
        // One process group, led by local rank 0: a stop reaches every rank.
        for rank in &record.ranks {
            let pgid = nix::unistd::getpgid(Some(Pid::from_raw(rank.pid as i32))).unwrap();
            assert_eq!(pgid.as_raw() as u32, record.pid, "rank {}", rank.local_rank);
        }
        supervisor.stop_current("test over").await;
        assert!(!record.is_running(), "every rank is gone after the stop");
        let exit = worker_exit(&mut rx).expect("the exit is reported");
        assert!(exit.stopped_by_agent);
    }

    #[tokio::test]
    async fn a_reform_launch_keeps_the_running_worker_and_tells_it_the_next_generation() {
        let dir = crate::testdir::Scratch::new("reform");
        let (mut supervisor, mut rx) = supervisor(&dir);
        let script = "echo \"told at $HOLDFAST_REFORM_FILE\"; exec sleep 30";
        supervisor
            .handle(WorkerCommand::Launch(Box::new(native_launch(script))))
            .await;
        let first = supervisor.running.as_ref().unwrap().record.clone();
        let path = super::super::reform::reform_file(&dir, "native");
        let told_at = format!("told at {}", path.display());
        assert_eq!(
            log_lines(&first.log_file, "told at ", 2).await,
            [told_at.clone(), told_at]
        );
        let next = pb::Launch {
            generation: 2,
            reform: true,
            node_rank: 0,
            master_port: 29556,
            rdzv_id: "native-g2".into(),
            ..native_launch(script)
        };
        supervisor
            .handle(WorkerCommand::Launch(Box::new(next)))
            .await;
        // The same processes, now generation 2's; the ranks find the generation in the file.
        let kept = supervisor.running.as_ref().unwrap().record.clone();
        assert_eq!(
            (kept.pid, kept.generation, kept.node_rank),
            (first.pid, 2, 0)
        );
        assert!(first.is_running());
        let told: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(told["generation"], 2);
        assert_eq!(told["master_port"], 29556);
        assert_eq!(told["node_rank"], 0);
        assert_eq!(told["nproc_per_node"], 2);
        let events: Vec<(u64, bool)> = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.body {
                Some(ToCoordinator::WorkerEvent(e)) => Some((
                    e.generation,
                    matches!(e.kind, Some(pb::worker_event::Kind::Started(_))),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            [(1, true), (2, true)],
            "started twice, never exited"
        );
        // A launch without `reform` replaces the worker as always.
        let plain = pb::Launch {
            generation: 3,
            ..native_launch(script)
        };
        supervisor
            .handle(WorkerCommand::Launch(Box::new(plain)))
            .await;
        assert_ne!(supervisor.running.as_ref().unwrap().record.pid, first.pid);
        assert!(!first.is_running());
        supervisor.stop_current("test over").await;
    }

    #[tokio::test]
    async fn a_failing_rank_ends_the_worker_and_takes_the_other_ranks_with_it() {
        let dir = crate::testdir::Scratch::new("native-fail");
        let (mut supervisor, mut rx) = supervisor(&dir);
        // Local rank 1 fails once both have started; rank 0 would train on.
        let script = "echo started $LOCAL_RANK; \
                      if [ \"$LOCAL_RANK\" = 1 ]; then sleep 0.3; exit 3; fi; exec sleep 30";
        supervisor
            .handle(WorkerCommand::Launch(Box::new(native_launch(script))))
            .await;
        let record = supervisor.running.as_ref().unwrap().record.clone();
        let running = supervisor.running.as_mut().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), &mut running.exited)
            .await
            .expect("the failing rank ends the worker")
            .unwrap();
        supervisor.on_exit(status).await;
        let exit = worker_exit(&mut rx).expect("the exit is reported");
        assert_eq!((exit.code, exit.stopped_by_agent), (Some(3), false));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while record.is_running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!record.is_running(), "rank 0 went with the group");
        let log = std::fs::read_to_string(&record.log_file).unwrap();
        assert!(
            log.contains("holdfast: local rank 1") && log.contains("exit status: 3"),
            "{log}"
        );
    }

    /// A module the standby itself never needs: imported only because the job asked.
    const WARM_MODULE: &str = "xml.dom.minidom";

    /// A training script that prints its rank, generation, whether [`WARM_MODULE`] was
    /// imported before it started, and its arguments; and a warm launch of it.
    fn warm_job(dir: &std::path::Path) -> impl Fn(u64) -> pb::Launch {
        let module = WARM_MODULE;
        let script = dir.join("train.py");
        std::fs::write(
            &script,
            format!(
                "import os, sys, time\n\
                 print('rank', os.environ['RANK'], 'generation', os.environ['HOLDFAST_GENERATION'],\n\
                       'warm', {module:?} in sys.modules, 'args', sys.argv[1:], flush=True)\n\
                 time.sleep(30)\n"
            ),
        )
        .unwrap();
        move |generation| pb::Launch {
            generation,
            rdzv_id: format!("native-g{generation}"),
            warm_imports: vec![module.into()],
            command: vec![
                "python3".into(),
                script.display().to_string(),
                "--steps".into(),
                "{generation}".into(),
            ],
            ..native_launch("")
        }
    }

    #[tokio::test]
    async fn a_relaunch_runs_on_the_standby_interpreters_with_the_imports_done() {
        let dir = crate::testdir::Scratch::new("standby");
        let (mut supervisor, _rx) = supervisor(&dir);
        let launch = warm_job(&dir);
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(1))))
            .await;
        let first = supervisor.running.as_ref().unwrap().record.clone();
        let mut lines = log_lines(&first.log_file, "rank ", 2).await;
        lines.sort();
        assert_eq!(
            lines,
            [
                "rank 2 generation 1 warm False args ['--steps', '1']",
                "rank 3 generation 1 warm False args ['--steps', '1']",
            ],
            "the first generation starts cold"
        );
        // Standbys were started for the next generation; they take its ranks.
        let standby_leader = supervisor.standby.as_ref().and_then(|s| s.leader());
        assert!(standby_leader.is_some());
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(2))))
            .await;
        let second = supervisor.running.as_ref().unwrap().record.clone();
        assert_eq!(Some(second.pid), standby_leader);
        let mut lines = log_lines(&second.log_file, "rank ", 2).await;
        lines.sort();
        assert_eq!(
            lines,
            [
                "rank 2 generation 2 warm True args ['--steps', '2']",
                "rank 3 generation 2 warm True args ['--steps', '2']",
            ]
        );
        assert!(!first.is_running(), "the first generation was stopped");
        // A fence ends the workers and the standbys prepared after the second launch.
        let next_standby = supervisor
            .standby
            .as_ref()
            .and_then(|s| s.leader())
            .unwrap();
        supervisor
            .handle(WorkerCommand::Fence(pb::Fence {
                term: 1,
                ..Default::default()
            }))
            .await;
        assert!(supervisor.standby.is_none());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while (second.is_running() || record::is_running(next_standby, 0))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!second.is_running() && !record::is_running(next_standby, 0));
    }

    #[tokio::test]
    async fn standbys_the_config_asks_for_wait_from_the_start_and_take_the_first_launch() {
        let dir = crate::testdir::Scratch::new("standby-config");
        let (supervisor, _rx) = supervisor(&dir);
        let mut supervisor = supervisor.with_standby(Some(super::super::StandbyKey {
            python: "python3".into(),
            imports: vec![WARM_MODULE.into()],
            nproc_per_node: 2,
        }));
        supervisor.refill_standby();
        let leader = supervisor.standby.as_ref().and_then(|s| s.leader());
        assert!(leader.is_some(), "standbys wait before any launch");
        let launch = warm_job(&dir);
        supervisor
            .handle(WorkerCommand::Launch(Box::new(launch(1))))
            .await;
        let record = supervisor.running.as_ref().unwrap().record.clone();
        assert_eq!(Some(record.pid), leader);
        let lines = log_lines(&record.log_file, "rank ", 2).await;
        assert!(
            lines.len() == 2 && lines.iter().all(|l| l.contains("warm True")),
            "{lines:?}"
        );
        supervisor.stop_current("test over").await;
        supervisor.discard_standby();
    }
}
