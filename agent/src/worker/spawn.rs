//! Starting a worker: the launch's command with its placeholders filled in, run as a process
//! group of its own with the launch's environment and the `HOLDFAST_*` variables, its output
//! appended to a log file under `<state_dir>/logs` rather than a pipe, so it outlives the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use holdfast_core::now_ms;
use holdfast_proto::v1 as pb;
use pb::agent_message::Body as ToCoordinator;
use tokio::sync::oneshot;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::native;
use super::placeholders::{placeholders, substitute};
use super::record::{self, start_ticks, RankProcess};
use super::standby::{Standby, StandbyKey};
use super::{Supervisor, WorkerRecord};

/// Worker logs kept in `<state_dir>/logs` (older ones are removed at each launch).
const KEEP_LOGS: usize = 8;

impl Supervisor {
    /// Starts `launch`'s worker and makes it the running one; a worker that cannot start is
    /// reported as exited (code 127, as a shell reports a command it cannot run).
    pub(super) async fn launch(&mut self, launch: pb::Launch) {
        let mut vars = placeholders(&launch, &self.node_id, &self.advertise_address);
        if let Some(dir) = super::memtier::job_dir(&self.memory_dir, &launch.job_id) {
            vars.push(("memory_dir", dir.display().to_string()));
        }
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
        let log = match open_log(&log_file) {
            Ok(log) => log,
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
        // 0: the command is its own launcher (one process); N: one process per local rank.
        let native = launch.nproc_per_node > 0;
        let warm = StandbyKey::of(launch.nproc_per_node, &launch.warm_imports, &argv);
        let mut children = Vec::new();
        if let Some(standby) = self.standby.take() {
            let taken = self
                .take_standby(
                    standby,
                    warm.as_ref(),
                    &launch,
                    &argv,
                    &vars,
                    &progress_file,
                    &log_file,
                )
                .await;
            children = taken.unwrap_or_default();
        }
        if children.is_empty() {
            children = match spawn_ranks(program, args, &launch, &vars, &progress_file, &log) {
                Ok(children) => children,
                Err(e) => {
                    tracing::error!(job = launch.job_id, "cannot start worker {program:?}: {e}");
                    self.report_exit(&launch.job_id, launch.generation, Some(127), None, false);
                    return;
                }
            };
        }
        let pid = children.first().and_then(|(_, c)| c.id()).unwrap_or(0);
        let ranks = if native {
            children
                .iter()
                .map(|(local_rank, child)| {
                    let pid = child.id().unwrap_or(0);
                    RankProcess {
                        local_rank: *local_rank,
                        pid,
                        start_ticks: start_ticks(pid).unwrap_or(0),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
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
            ranks,
        };
        tracing::info!(
            job = launch.job_id,
            generation = launch.generation,
            rank = launch.node_rank,
            pid,
            nproc_per_node = launch.nproc_per_node,
            "worker started: {}",
            argv.join(" ")
        );
        record::write(&self.state_dir, Some(&record));
        self.send(ToCoordinator::WorkerEvent(pb::WorkerEvent {
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            kind: Some(pb::worker_event::Kind::Started(pb::WorkerStarted { pid })),
            at_unix_ms: now_ms(),
        }));
        let (exit_tx, exit_rx) = oneshot::channel();
        self.follow(record, exit_rx, 0);
        let stopping = self
            .running
            .as_ref()
            .map(|r| r.stop_requested.clone())
            .unwrap_or_default();
        tokio::spawn(wait_for_ranks(
            children,
            native.then_some(log),
            stopping,
            exit_tx,
        ));
        // The next generation's ranks get ready while this one trains.
        if let Some(key) = warm {
            match Standby::start(key, &self.state_dir) {
                Ok(standby) => self.standby = Some(standby),
                Err(e) => tracing::warn!(
                    "cannot start standby interpreters (the next launch starts cold): {e}"
                ),
            }
        }
    }
}

impl Supervisor {
    /// The standbys as `launch`'s ranks, if they were prepared for it (`warm`) and all still
    /// wait; otherwise they are discarded and `None` says to start cold.
    #[allow(clippy::too_many_arguments)]
    async fn take_standby(
        &mut self,
        mut standby: Standby,
        warm: Option<&StandbyKey>,
        launch: &pb::Launch,
        argv: &[String],
        vars: &[(&'static str, String)],
        progress_file: &Path,
        log_file: &Path,
    ) -> Option<Vec<(u32, tokio::process::Child)>> {
        if warm != Some(&standby.key) || !standby.alive() {
            tracing::info!(
                job = launch.job_id,
                "standby interpreters discarded: not for this launch"
            );
            standby.discard();
            return None;
        }
        let env = (0..launch.nproc_per_node)
            .map(|local_rank| {
                worker_env(launch, vars, progress_file)
                    .into_iter()
                    .chain(native::rank_env(launch, local_rank))
                    .collect()
            })
            .collect();
        match standby.take(&argv[1..], env, log_file).await {
            Ok(children) => {
                tracing::info!(
                    job = launch.job_id,
                    generation = launch.generation,
                    "ranks start on warm standby interpreters"
                );
                Some(children)
            }
            Err(e) => {
                tracing::warn!(
                    job = launch.job_id,
                    "standby interpreters failed; starting cold: {e}"
                );
                None
            }
        }
    }

    /// Ends the standby interpreters, if any (the node was fenced, or its job is done here).
    pub(super) fn discard_standby(&mut self) {
        if let Some(standby) = self.standby.take() {
            standby.discard();
        }
    }
}

/// Starts the worker's processes: the command once, or once per local rank under the native
/// launcher, all in one new process group led by the first, writing to `log`. A rank that
/// cannot start takes the ones already started with it.
fn spawn_ranks(
    program: &str,
    args: &[String],
    launch: &pb::Launch,
    vars: &[(&'static str, String)],
    progress_file: &Path,
    log: &std::fs::File,
) -> std::io::Result<Vec<(u32, tokio::process::Child)>> {
    let native = launch.nproc_per_node > 0;
    let mut children: Vec<(u32, tokio::process::Child)> = Vec::new();
    for local_rank in 0..launch.nproc_per_node.max(1) {
        // Every rank joins the first one's group: a stop signals them all at once.
        let group = children.first().and_then(|(_, c)| c.id()).unwrap_or(0);
        let spawned = log.try_clone().and_then(|out| {
            let err = log.try_clone()?;
            let env = worker_env(launch, vars, progress_file);
            let mut command = worker_command(program, args, env);
            if native {
                command.envs(native::rank_env(launch, local_rank));
            }
            command
                .process_group(i32::try_from(group).unwrap_or(0))
                .stdout(out)
                .stderr(err)
                .spawn()
        });
        match spawned {
            Ok(child) => children.push((local_rank, child)),
            Err(e) => {
                if group != 0 {
                    // The ranks already started cannot train without this one.
                    let _ = killpg(Pid::from_raw(group as i32), Signal::SIGKILL);
                }
                return Err(e);
            }
        }
    }
    Ok(children)
}

/// Waits for the worker's processes and sends how the worker ended: the first rank to fail
/// decides at once (the actor then kills the rest with the group), else the last to exit 0.
/// Under the native launcher each rank's exit is noted in the worker's `log` too, so the
/// operator sees which rank went first.
async fn wait_for_ranks(
    children: Vec<(u32, tokio::process::Child)>,
    log: Option<std::fs::File>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    exit_tx: oneshot::Sender<Option<std::process::ExitStatus>>,
) {
    let mut waits = tokio::task::JoinSet::new();
    for (local_rank, mut child) in children {
        let pid = child.id().unwrap_or(0);
        waits.spawn(async move { (local_rank, pid, child.wait().await) });
    }
    let mut exits = native::RankExits::new(waits.len());
    while let Some(joined) = waits.join_next().await {
        let (local_rank, pid, waited) = match joined {
            Ok(exit) => exit,
            Err(e) => {
                tracing::error!("waiting for a worker process failed: {e}");
                let _ = exit_tx.send(None);
                return;
            }
        };
        let status = match waited {
            Ok(status) => status,
            Err(e) => {
                tracing::error!("waiting for worker {pid} failed: {e}");
                let _ = exit_tx.send(None);
                return;
            }
        };
        if let Some(mut log) = log.as_ref() {
            use std::io::Write;
            tracing::info!(local_rank, pid, "rank exited: {status}");
            let _ = writeln!(
                log,
                "holdfast: local rank {local_rank} (pid {pid}) exited: {status}"
            );
        }
        let stopping = stopping.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(end) = exits.exited(status, stopping) {
            let _ = exit_tx.send(Some(end));
            return;
        }
    }
}

/// The worker's command: `program` with `args` and `env` (see [`worker_env`]), no stdin, in a
/// process group of its own (the group is what a stop signals), left running when the agent
/// goes.
fn worker_command(
    program: &str,
    args: &[String],
    env: Vec<(String, String)>,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    command
}

/// The variables a worker gets beyond the agent's own: the launch's environment, the
/// placeholders as `HOLDFAST_*` and the progress file.
fn worker_env(
    launch: &pb::Launch,
    vars: &[(&'static str, String)],
    progress_file: &Path,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(
        vars.iter()
            .map(|(k, v)| (format!("HOLDFAST_{}", k.to_uppercase()), v.clone())),
    );
    env.push((
        "HOLDFAST_PROGRESS_FILE".into(),
        progress_file.display().to_string(),
    ));
    if launch.nproc_per_node > 0 {
        // Where an in-process restart tells the ranks the next generation (reform.rs).
        let dir = progress_file.parent().unwrap_or(Path::new("."));
        let reform = super::reform::reform_file(dir, &launch.job_id);
        env.push(("HOLDFAST_REFORM_FILE".into(), reform.display().to_string()));
    }
    env
}

/// Opens (appending) a worker log, creating its directory and keeping only the most recent
/// [`KEEP_LOGS`] logs there.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
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
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `s` as a file name part: anything but ASCII letters, digits, `-` and `_` becomes `_`.
pub(super) fn sanitize(s: &str) -> String {
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
    fn the_worker_gets_the_launch_environment_and_the_holdfast_variables() {
        let launch = pb::Launch {
            job_id: "j".into(),
            generation: 3,
            node_rank: 1,
            env: [("NCCL_DEBUG".to_string(), "INFO".to_string())].into(),
            ..Default::default()
        };
        let vars = placeholders(&launch, "n1", "10.0.0.2");
        let env = worker_env(&launch, &vars, Path::new("/s/progress"));
        let command = worker_command("train", &[], env);
        let env: std::collections::HashMap<_, _> = command
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        for (key, value) in [
            ("NCCL_DEBUG", "INFO"),
            ("HOLDFAST_JOB_ID", "j"),
            ("HOLDFAST_NODE_ID", "n1"),
            ("HOLDFAST_NODE_RANK", "1"),
            ("HOLDFAST_GENERATION", "3"),
            ("HOLDFAST_LOCAL_ADDR", "10.0.0.2"),
            ("HOLDFAST_PROGRESS_FILE", "/s/progress"),
        ] {
            assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
        }
    }

    #[test]
    fn only_the_latest_logs_are_kept() {
        let state_dir = crate::testdir::Scratch::new("logs");
        let dir = state_dir.join("logs");
        // Logs of one time stamp go by name: these, in the order they were opened.
        for i in 0..KEEP_LOGS + 3 {
            open_log(&dir.join(format!("{i:02}.log"))).unwrap();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), KEEP_LOGS);
        assert!(
            !dir.join("00.log").exists() && dir.join(format!("{:02}.log", KEEP_LOGS + 2)).exists()
        );
    }

    #[test]
    fn job_ids_become_safe_file_names() {
        assert_eq!(sanitize("team/job 1-a_b"), "team_job_1-a_b");
    }
}
