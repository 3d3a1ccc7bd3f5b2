//! Warm standby interpreters for the native launcher: a job that asks for `warm_imports` gets,
//! on every node that ran it, one Python per local rank started right after each launch, with
//! those modules imported (`python/holdfast/zygote.py`, shipped inside the agent). When the
//! next generation's launch comes for the same interpreter, modules and ranks, the standbys
//! become its ranks (they are told their argv, variables and log on stdin and run the script
//! with `runpy`), so a relaunch skips the imports — 2–4 s of torch on a small host.
//!
//! Standbys are the agent's children in one process group of their own (the first leads), so
//! once they run ranks a stop signals them as it signals any native worker. An idle standby
//! ends when its stdin closes: the agent discarded it (another command, a fence, the job done
//! on this node) or the agent itself went away.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

/// The standby interpreter's program, written to `<state_dir>/zygote.py` when used.
const ZYGOTE: &str = include_str!("../../../python/holdfast/zygote.py");

/// What a standby was prepared for: a launch can use it only if all of these match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyKey {
    /// The interpreter, as the command names it (`argv[0]`).
    pub(super) python: String,
    pub(super) imports: Vec<String>,
    pub(super) nproc_per_node: u32,
}

impl StandbyKey {
    /// The standby `argv` (the launch's command, substituted) could run on: a native launch
    /// that asks for warm imports, of `PYTHON SCRIPT [ARGS…]`. Anything else (`python -m …`,
    /// a shell wrapper) starts cold.
    pub(super) fn of(nproc_per_node: u32, imports: &[String], argv: &[String]) -> Option<Self> {
        let (python, script) = (argv.first()?, argv.get(1)?);
        let is_python = Path::new(python)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("python"));
        (nproc_per_node > 0 && !imports.is_empty() && is_python && !script.starts_with('-')).then(
            || StandbyKey {
                python: python.clone(),
                imports: imports.to_vec(),
                nproc_per_node,
            },
        )
    }
}

/// The standbys `config` asks for from the start, if any.
pub fn configured_standby(config: &crate::AgentConfig) -> Option<StandbyKey> {
    (!config.standby_python.as_os_str().is_empty()).then(|| StandbyKey {
        python: config.standby_python.display().to_string(),
        imports: config.standby_imports.clone(),
        nproc_per_node: config.standby_ranks,
    })
}

/// One standby interpreter per local rank, idle until a launch takes them.
pub(super) struct Standby {
    pub(super) key: StandbyKey,
    ranks: Vec<(Child, ChildStdin)>,
}

/// What one rank is told when its standby takes the launch.
#[derive(serde::Serialize)]
struct RankLaunch<'a> {
    /// The script and its arguments (the command without the interpreter).
    argv: &'a [String],
    /// The variables a cold start would have had beyond the agent's own.
    env: std::collections::BTreeMap<String, String>,
    log: &'a Path,
}

impl Standby {
    /// Starts `key.nproc_per_node` standbys; their own output (import errors) goes to
    /// `<state_dir>/standby.log`.
    pub(super) fn start(key: StandbyKey, state_dir: &Path) -> std::io::Result<Standby> {
        let zygote = write_zygote(state_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("standby.log"))?;
        let mut standby = Standby {
            key,
            ranks: Vec::new(),
        };
        for _ in 0..standby.key.nproc_per_node {
            let group = standby.leader().unwrap_or(0);
            let spawned = tokio::process::Command::new(&standby.key.python)
                .arg(&zygote)
                .args(&standby.key.imports)
                .stdin(Stdio::piped())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .process_group(i32::try_from(group).unwrap_or(0))
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    standby.discard();
                    return Err(e);
                }
            };
            let Some(stdin) = child.stdin.take() else {
                let _ = child.start_kill();
                standby.discard();
                return Err(std::io::Error::other("the standby has no stdin"));
            };
            standby.ranks.push((child, stdin));
        }
        tracing::info!(
            python = standby.key.python,
            imports = ?standby.key.imports,
            ranks = standby.ranks.len(),
            "standby interpreters started"
        );
        Ok(standby)
    }

    pub(super) fn leader(&self) -> Option<u32> {
        self.ranks.first().and_then(|(c, _)| c.id())
    }

    /// Whether every standby still waits (none exited, e.g. on a broken interpreter).
    pub(super) fn alive(&mut self) -> bool {
        self.ranks
            .iter_mut()
            .all(|(child, _)| matches!(child.try_wait(), Ok(None)))
    }

    /// Makes the standbys the launch's ranks: each is told its argv, variables (`env[i]` for
    /// local rank i) and log. On an error the standbys are killed; the caller starts cold.
    pub(super) async fn take(
        self,
        argv: &[String],
        env: Vec<std::collections::BTreeMap<String, String>>,
        log: &Path,
    ) -> std::io::Result<Vec<(u32, Child)>> {
        let leader = self.leader();
        let mut taken = Vec::new();
        let mut failure = None;
        for ((local_rank, (child, mut stdin)), env) in (0u32..).zip(self.ranks).zip(env) {
            let told =
                serde_json::to_vec(&RankLaunch { argv, env, log }).map_err(std::io::Error::other);
            let written = match told {
                Ok(mut line) => {
                    line.push(b'\n');
                    stdin.write_all(&line).await
                }
                Err(e) => Err(e),
            };
            // Closing stdin after the one line: the standby reads no more.
            drop(stdin);
            taken.push((local_rank, child));
            if let Err(e) = written {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            if let Some(leader) = leader {
                let _ = killpg(Pid::from_raw(leader as i32), Signal::SIGKILL);
            }
            return Err(e);
        }
        Ok(taken)
    }

    /// Ends the standbys (their stdin closes and the group is killed; tokio reaps them).
    pub(super) fn discard(self) {
        if let Some(leader) = self.leader() {
            let _ = killpg(Pid::from_raw(leader as i32), Signal::SIGKILL);
        }
    }
}

/// Writes the zygote into the state directory, unless it is there already as shipped.
fn write_zygote(state_dir: &Path) -> std::io::Result<PathBuf> {
    let path = state_dir.join("zygote.py");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(ZYGOTE) {
        crate::durable::write(&path, ZYGOTE.as_bytes())?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn only_a_native_python_script_with_warm_imports_runs_warm() {
        let torch = vec!["torch".to_string()];
        let key = StandbyKey::of(2, &torch, &argv(&["/venv/bin/python3", "train.py", "-x"]));
        assert_eq!(
            key,
            Some(StandbyKey {
                python: "/venv/bin/python3".into(),
                imports: torch.clone(),
                nproc_per_node: 2,
            })
        );
        assert_eq!(StandbyKey::of(0, &torch, &argv(&["python", "t.py"])), None);
        assert_eq!(StandbyKey::of(2, &[], &argv(&["python", "t.py"])), None);
        assert_eq!(
            StandbyKey::of(2, &torch, &argv(&["python", "-m", "t"])),
            None
        );
        assert_eq!(StandbyKey::of(2, &torch, &argv(&["bash", "t.sh"])), None);
        assert_eq!(StandbyKey::of(2, &torch, &argv(&["python"])), None);
    }
}
