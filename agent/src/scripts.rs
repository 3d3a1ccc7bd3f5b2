//! The lifecycle script runner: executes operator scripts (`on-create`, `health/*`, `on-fence`)
//! from the configured script directory, and only from there.
//!
//! The contract (environment, exit codes, timeout, captured output) is written down in
//! `lifecycle-scripts/README.md`. A script runs as its own process group so a timeout kills
//! everything it started; its stdout and stderr are merged and the last [`OUTPUT_TAIL_BYTES`]
//! are returned. The name comes over the network, so it is checked before anything runs: a
//! relative path of plain components inside the directory, never absolute, never `..`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holdfast_proto::v1 as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of a script's output is kept (the end of it: that is where the reason is).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// After the script exits, how long its output pipes may stay open (a background child that
/// kept them) before reading stops.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Default timeout when the request carries none.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;

/// Why a script name is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptNameError {
    #[error("script name is empty")]
    Empty,
    #[error("script name {0:?} must be relative to the script directory")]
    Absolute(String),
    #[error("script name {0:?} may only hold plain path components (no `..`, no `.`)")]
    Escapes(String),
    #[error("script name {0:?} holds a control character")]
    Control(String),
}

/// Checks a script name sent by the coordinator and joins it to `dir`.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, ScriptNameError> {
    if name.is_empty() {
        return Err(ScriptNameError::Empty);
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(ScriptNameError::Control(name.to_string()));
    }
    let path = Path::new(name);
    if path.is_absolute() {
        return Err(ScriptNameError::Absolute(name.to_string()));
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) || name.ends_with('/') {
        return Err(ScriptNameError::Escapes(name.to_string()));
    }
    Ok(dir.join(path))
}

/// Runs lifecycle scripts for this node.
#[derive(Debug, Clone)]
pub struct ScriptRunner {
    /// The operator's script directory; `None` when the agent has none configured.
    pub dir: Option<PathBuf>,
    /// Variables every script gets (`HOLDFAST_NODE_ID`, `HOLDFAST_STATE_DIR`, …).
    pub base_env: BTreeMap<String, String>,
}

impl ScriptRunner {
    /// Runs `request` to its end (or its timeout) and answers with a `CommandResult`.
    pub async fn run(&self, request: &pb::RunScript) -> pb::CommandResult {
        let started = Instant::now();
        let fail = |message: String| pb::CommandResult {
            command_id: request.command_id.clone(),
            ok: false,
            message,
            output: String::new(),
            exit_code: None,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let Some(dir) = &self.dir else {
            return fail(format!(
                "cannot run {:?}: this agent has no script_dir configured",
                request.script
            ));
        };
        let path = match resolve(dir, &request.script) {
            Ok(p) => p,
            Err(e) => return fail(format!("refused: {e}")),
        };
        if !path.is_file() {
            return fail(format!("script {} not found", path.display()));
        }
        let timeout = Duration::from_millis(if request.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            request.timeout_ms
        });
        let mut command = tokio::process::Command::new(&path);
        command
            .args(&request.args)
            .current_dir(dir)
            .envs(self.base_env.iter())
            .envs(request.env.iter())
            .env("HOLDFAST_SCRIPT", &request.script)
            .env("HOLDFAST_SCRIPT_DIR", dir)
            .env(
                "HOLDFAST_TIMEOUT_S",
                (timeout.as_millis() / 1000).max(1).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot start {}: {e}", path.display())),
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|r| tokio::spawn(collect_tail(r, tail.clone())))
        .collect();
        let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => (status.ok(), false),
            Err(_) => {
                // The whole group: a script's children must not outlive its timeout.
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                (status, true)
            }
        };
        for reader in readers {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, reader).await;
        }
        let output = tail
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let ok = !timed_out && exit_code == Some(0);
        let message = if timed_out {
            format!(
                "{} timed out after {} ms; its process group was killed",
                request.script,
                timeout.as_millis()
            )
        } else {
            match (exit_code, signal) {
                (Some(0), _) => format!("{} passed", request.script),
                (Some(c), _) => format!(
                    "{} failed with exit code {c}: {}",
                    request.script,
                    last_line(&output)
                ),
                (None, Some(s)) => format!("{} killed by signal {s}", request.script),
                (None, None) => format!("{} ended with an unknown status", request.script),
            }
        };
        pb::CommandResult {
            command_id: request.command_id.clone(),
            ok,
            message,
            output,
            exit_code,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// The last non-empty line of a script's output: by contract, its one-line reason.
pub fn last_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
}

/// Appends everything `reader` yields to `tail`, keeping the last [`OUTPUT_TAIL_BYTES`].
async fn collect_tail(mut reader: Box<dyn AsyncRead + Unpin + Send>, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut t) = tail.lock() {
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > OUTPUT_TAIL_BYTES {
                        let cut = t.len() - OUTPUT_TAIL_BYTES;
                        t.drain(..cut);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Alive and not a zombie waiting for a reaper.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    fn request(name: &str, timeout_ms: u64) -> pb::RunScript {
        pb::RunScript {
            command_id: "c1".into(),
            script: name.into(),
            timeout_ms,
            env: [("EXTRA".to_string(), "x".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_outside_the_directory_are_refused() {
        let dir = Path::new("/srv/scripts");
        assert_eq!(resolve(dir, "health/host"), Ok(dir.join("health/host")));
        assert_eq!(resolve(dir, "on-create"), Ok(dir.join("on-create")));
        for bad in [
            "",
            "/bin/sh",
            "../x",
            "health/../../x",
            "./on-create",
            "health/",
            "a\nb",
        ] {
            assert!(resolve(dir, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn success_failure_timeout_and_garbage_output() {
        let tmp = std::env::temp_dir().join(format!("holdfast-scripts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        script(
            &tmp,
            "ok",
            "echo \"node=$HOLDFAST_NODE_ID extra=$EXTRA script=$HOLDFAST_SCRIPT\"",
        );
        script(
            &tmp,
            "health/bad",
            "echo checking; echo 'disk full' >&2; exit 3",
        );
        script(
            &tmp,
            "slow",
            "sleep 30 & echo $! > \"$HOLDFAST_SCRIPT_DIR/child.pid\"; sleep 30",
        );
        script(&tmp, "garbage", "head -c 20000 /dev/urandom; exit 0");
        let runner = ScriptRunner {
            dir: Some(tmp.clone()),
            base_env: [("HOLDFAST_NODE_ID".to_string(), "n1".to_string())].into(),
        };

        let r = runner.run(&request("ok", 5000)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.output.trim(), "node=n1 extra=x script=ok");

        let r = runner.run(&request("health/bad", 5000)).await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, Some(3));
        assert!(
            r.output.contains("checking") && r.output.contains("disk full"),
            "{r:?}"
        );
        assert!(
            r.message.contains("exit code 3") && r.message.contains("disk full"),
            "{}",
            r.message
        );

        let r = runner.run(&request("slow", 300)).await;
        assert!(!r.ok && r.message.contains("timed out"), "{r:?}");
        assert!(
            r.duration_ms >= 300 && r.duration_ms < 5000,
            "{}",
            r.duration_ms
        );
        let child: i32 = std::fs::read_to_string(tmp.join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child died with its group.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(child) {
            assert!(
                Instant::now() < deadline,
                "child {child} of a timed-out script survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let r = runner.run(&request("garbage", 5000)).await;
        assert!(
            r.ok && r.output.len() <= OUTPUT_TAIL_BYTES * 3,
            "{}",
            r.output.len()
        );

        let r = runner.run(&request("../etc/passwd", 5000)).await;
        assert!(!r.ok && r.message.starts_with("refused"), "{r:?}");
        let r = runner.run(&request("missing", 5000)).await;
        assert!(!r.ok && r.message.contains("not found"), "{r:?}");
        let none = ScriptRunner {
            dir: None,
            base_env: BTreeMap::new(),
        };
        assert!(none
            .run(&request("ok", 5000))
            .await
            .message
            .contains("no script_dir"));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
