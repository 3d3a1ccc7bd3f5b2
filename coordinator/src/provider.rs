//! Where replacement hosts come from, behind one trait: [`SparePool`] (the default: agents
//! registered as spares are the replacements, nothing to ask for) or [`ExecProvider`], which
//! runs the operator's `provision` and `fence` scripts (EC2, Slurm, a static host list: see
//! `lifecycle-scripts/providers/`). The decision to provision or fence is the core's
//! ([`crate::cluster::Effect::Provision`], [`crate::cluster::Effect::FenceHost`]); the shell
//! calls the provider and reports back. A provisioned host joins like any other: its agent says
//! hello, bootstraps, is checked, and becomes ready for the job that waits.
//!
//! The exec contract (`lifecycle-scripts/providers/README.md`): the script runs with a timeout
//! (its process group is killed at it), is retried on failure or timeout, and `provision` must
//! end its stdout with one JSON object (`{"host": "…"}`); other output is a script bug and is
//! not retried.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

/// A request for `count` new hosts for `job_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    pub request_id: u64,
    pub job_id: String,
    pub count: u32,
}

/// What a provider said it started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provisioned {
    /// Host names or instance ids, as the script reported them (for the operator).
    pub hosts: Vec<String>,
    pub attempts: u32,
    pub output: String,
}

/// A host to terminate, power off or drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRequest {
    pub node_id: String,
    pub hostname: String,
    pub address: String,
    pub reason: String,
    /// The open incident the fence belongs to, when there is one (`HOLDFAST_INCIDENT_ID`).
    pub incident_id: Option<u64>,
}

/// Why a provider call failed, with what the script printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("{script} not found or not executable in {dir}")]
    Missing { script: String, dir: String },
    #[error("{script} timed out after {timeout_ms} ms ({attempts} attempts); output: {output}")]
    TimedOut {
        script: String,
        timeout_ms: u64,
        attempts: u32,
        output: String,
    },
    #[error("{script} failed ({status}) after {attempts} attempts; output: {output}")]
    Failed {
        script: String,
        status: String,
        attempts: u32,
        output: String,
    },
    #[error("{script} printed no JSON object on its last line (got {last_line:?}); not retried")]
    BadOutput { script: String, last_line: String },
}

/// A source of replacement hosts.
pub trait ReplacementProvider: Send + Sync {
    /// `spares` or `exec`, for logs.
    fn name(&self) -> &'static str;
    /// True when asking for hosts can bring new ones (a spare pool cannot).
    fn provisions(&self) -> bool;
    fn provision(
        &self,
        request: ProvisionRequest,
    ) -> BoxFuture<'_, Result<Provisioned, ProviderError>>;
    fn fence(&self, request: FenceRequest) -> BoxFuture<'_, Result<String, ProviderError>>;
}

/// The embedded default: replacements are the agents registered as spares.
#[derive(Debug, Clone, Default)]
pub struct SparePool;

impl ReplacementProvider for SparePool {
    fn name(&self) -> &'static str {
        "spares"
    }

    fn provisions(&self) -> bool {
        false
    }

    fn provision(&self, _: ProvisionRequest) -> BoxFuture<'_, Result<Provisioned, ProviderError>> {
        Box::pin(async { Ok(Provisioned::default()) })
    }

    fn fence(&self, _: FenceRequest) -> BoxFuture<'_, Result<String, ProviderError>> {
        // A fenced spare-pool node is only taken out of service; nothing to power off.
        Box::pin(async { Ok(String::new()) })
    }
}

/// Runs `provision` and `fence` from the operator's provider directory.
#[derive(Debug, Clone)]
pub struct ExecProvider {
    pub dir: PathBuf,
    pub timeout: Duration,
    /// Tries in all (1 = no retry).
    pub attempts: u32,
    pub retry_delay: Duration,
}

/// One run of a provider script.
struct Run {
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    stdout: String,
    output: String,
}

const OUTPUT_TAIL: usize = 2048;

impl ExecProvider {
    async fn run_once(
        &self,
        script: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Run, ProviderError> {
        let path = self.dir.join(script);
        let mut command = tokio::process::Command::new(&path);
        command
            .args(args)
            .envs(env)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|_| ProviderError::Missing {
            script: script.to_string(),
            dir: self.dir.display().to_string(),
        })?;
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let read_out = async move {
            let mut buf = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async move {
            let mut buf = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut buf).await;
            }
            buf
        };
        let all = async { tokio::join!(child.wait(), read_out, read_err) };
        match tokio::time::timeout(self.timeout, all).await {
            Ok((status, stdout, stderr)) => {
                let stdout = String::from_utf8_lossy(&stdout).into_owned();
                let stderr = String::from_utf8_lossy(&stderr).into_owned();
                Ok(Run {
                    status: status.ok(),
                    timed_out: false,
                    output: tail(&format!("{stdout}{stderr}")),
                    stdout,
                })
            }
            Err(_) => {
                // The whole group: an aws or ssh child must not outlive the timeout.
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                Ok(Run {
                    status: None,
                    timed_out: true,
                    stdout: String::new(),
                    output: String::new(),
                })
            }
        }
    }

    /// Runs `script` until it exits 0 or the attempts are spent.
    async fn run(
        &self,
        script: &str,
        args: Vec<String>,
        mut env: BTreeMap<String, String>,
    ) -> Result<(Run, u32), ProviderError> {
        let mut last = None;
        for attempt in 1..=self.attempts.max(1) {
            env.insert("HOLDFAST_ATTEMPT".into(), attempt.to_string());
            let run = self.run_once(script, &args, &env).await?;
            if run.status.is_some_and(|s| s.success()) {
                return Ok((run, attempt));
            }
            tracing::warn!(
                script,
                attempt,
                "provider script failed: {}",
                run.output.trim()
            );
            last = Some(run);
            if attempt < self.attempts {
                tokio::time::sleep(self.retry_delay).await;
            }
        }
        let attempts = self.attempts.max(1);
        let run = last.unwrap_or(Run {
            status: None,
            timed_out: false,
            stdout: String::new(),
            output: String::new(),
        });
        if run.timed_out {
            return Err(ProviderError::TimedOut {
                script: script.to_string(),
                timeout_ms: self.timeout.as_millis() as u64,
                attempts,
                output: run.output,
            });
        }
        use std::os::unix::process::ExitStatusExt;
        let status = match run.status {
            Some(s) if s.code().is_some() => format!("exit code {}", s.code().unwrap_or_default()),
            Some(s) => format!("signal {}", s.signal().unwrap_or_default()),
            None => "unknown status".into(),
        };
        Err(ProviderError::Failed {
            script: script.to_string(),
            status,
            attempts,
            output: run.output,
        })
    }
}

impl ReplacementProvider for ExecProvider {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn provisions(&self) -> bool {
        true
    }

    fn provision(
        &self,
        request: ProvisionRequest,
    ) -> BoxFuture<'_, Result<Provisioned, ProviderError>> {
        Box::pin(async move {
            let env = BTreeMap::from([
                (
                    "HOLDFAST_PROVIDER_ACTION".to_string(),
                    "provision".to_string(),
                ),
                (
                    "HOLDFAST_REQUEST_ID".to_string(),
                    request.request_id.to_string(),
                ),
                ("HOLDFAST_JOB_ID".to_string(), request.job_id.clone()),
                ("HOLDFAST_COUNT".to_string(), request.count.to_string()),
            ]);
            let started = Instant::now();
            let (run, attempts) = self
                .run("provision", vec![request.count.to_string()], env)
                .await?;
            let last_line = run
                .stdout
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            let value: serde_json::Value = match serde_json::from_str(last_line) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    return Err(ProviderError::BadOutput {
                        script: "provision".into(),
                        last_line: last_line.chars().take(200).collect(),
                    })
                }
            };
            let hosts = match (&value["hosts"], &value["host"]) {
                (serde_json::Value::Array(list), _) => list
                    .iter()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect(),
                (_, serde_json::Value::String(h)) => vec![h.clone()],
                _ => Vec::new(),
            };
            tracing::info!(
                job = request.job_id,
                ?hosts,
                ms = started.elapsed().as_millis() as u64,
                "provisioned"
            );
            Ok(Provisioned {
                hosts,
                attempts,
                output: run.output,
            })
        })
    }

    fn fence(&self, request: FenceRequest) -> BoxFuture<'_, Result<String, ProviderError>> {
        Box::pin(async move {
            let mut env = BTreeMap::from([
                ("HOLDFAST_PROVIDER_ACTION".to_string(), "fence".to_string()),
                ("HOLDFAST_NODE_ID".to_string(), request.node_id.clone()),
                ("HOLDFAST_HOSTNAME".to_string(), request.hostname.clone()),
                ("HOLDFAST_ADDRESS".to_string(), request.address.clone()),
                ("HOLDFAST_REASON".to_string(), request.reason.clone()),
            ]);
            if let Some(id) = request.incident_id {
                env.insert("HOLDFAST_INCIDENT_ID".to_string(), id.to_string());
            }
            let args = vec![request.node_id.clone(), request.hostname.clone()];
            let (run, _) = self.run("fence", args, env).await?;
            Ok(run.output)
        })
    }
}

fn tail(text: &str) -> String {
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(OUTPUT_TAIL)
        .map_or(0, |(i, _)| i);
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn provider(name: &str, timeout_ms: u64) -> (ExecProvider, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("holdfast-provider-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = ExecProvider {
            dir: dir.clone(),
            timeout: Duration::from_millis(timeout_ms),
            attempts: 3,
            retry_delay: Duration::from_millis(10),
        };
        (p, dir)
    }

    fn request() -> ProvisionRequest {
        ProvisionRequest {
            request_id: 7,
            job_id: "job-1".into(),
            count: 1,
        }
    }

    #[tokio::test]
    async fn provision_success_parses_the_last_json_line() {
        let (p, dir) = provider("ok", 5000);
        script(
            &dir,
            "provision",
            "echo \"asking for $1 host(s) for $HOLDFAST_JOB_ID\"; echo '{\"host\": \"gpu-17\"}'",
        );
        let got = p.provision(request()).await.unwrap();
        assert_eq!(got.hosts, ["gpu-17"]);
        assert_eq!(got.attempts, 1);
        assert!(
            got.output.contains("asking for 1 host(s) for job-1"),
            "{}",
            got.output
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failing_script_is_retried_then_reported_with_its_output() {
        let (p, dir) = provider("fail", 5000);
        // Fails twice, then succeeds: retries hide a transient error.
        script(
            &dir,
            "provision",
            "echo \"attempt $HOLDFAST_ATTEMPT\" >&2; [ \"$HOLDFAST_ATTEMPT\" -ge 3 ] || exit 5; echo '{\"hosts\": [\"a\", \"b\"]}'",
        );
        let got = p.provision(request()).await.unwrap();
        assert_eq!((got.hosts.len(), got.attempts), (2, 3));
        script(
            &dir,
            "fence",
            "echo \"InsufficientInstanceCapacity (incident $HOLDFAST_INCIDENT_ID)\" >&2; exit 5",
        );
        let fence = FenceRequest {
            node_id: "n1".into(),
            hostname: "h1".into(),
            address: "10.0.0.1".into(),
            reason: "xid 79".into(),
            incident_id: Some(3),
        };
        match p.fence(fence).await {
            Err(ProviderError::Failed {
                status,
                attempts,
                output,
                ..
            }) => {
                assert_eq!((status.as_str(), attempts), ("exit code 5", 3));
                assert!(
                    output.contains("InsufficientInstanceCapacity (incident 3)"),
                    "{output}"
                );
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_hanging_script_is_killed_at_the_timeout_with_its_children() {
        let (p, dir) = provider("hang", 300);
        script(&dir, "fence", "sleep 30 & echo $! >> \"$0.children\"; wait");
        let started = Instant::now();
        let fence = FenceRequest {
            node_id: "n1".into(),
            hostname: "h1".into(),
            address: String::new(),
            reason: String::new(),
            incident_id: None,
        };
        let err = p.fence(fence).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::TimedOut { attempts: 3, .. }),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let children = std::fs::read_to_string(dir.join("fence.children")).unwrap();
        // SIGKILL is asynchronous: give the kernel a moment to deliver it.
        let alive = |pid: &str| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            !matches!(state, None | Some('Z'))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        for pid in children.lines() {
            while alive(pid) {
                assert!(
                    Instant::now() < deadline,
                    "child {pid} outlived the timeout"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn garbage_output_is_a_script_bug_and_not_retried() {
        let (p, dir) = provider("garbage", 5000);
        script(
            &dir,
            "provision",
            "echo \"$HOLDFAST_ATTEMPT\" >> \"$0.runs\"; echo 'i-0abc launched'",
        );
        let err = p.provision(request()).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::BadOutput { last_line, .. } if last_line == "i-0abc launched"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("provision.runs"))
                .unwrap()
                .lines()
                .count(),
            1
        );
        let missing = ExecProvider {
            dir: dir.join("nope"),
            ..p
        };
        assert!(matches!(
            missing.provision(request()).await,
            Err(ProviderError::Missing { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
