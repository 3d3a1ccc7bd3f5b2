//! Stack dumps of a stalled worker: `py-spy dump` of each Python process in its tree, so the
//! incident shows where every rank was when the job stopped. Bounded in time and size; without
//! py-spy the answer says stacks are not available.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proctree;

/// How long one process's dump may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long all of a worker's dumps may take together.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of the text sent for one worker (the coordinator keeps as much).
pub const STACKS_MAX_BYTES: usize = holdfast_core::incident::STACKS_MAX_BYTES;

/// The `py-spy` to run: `configured` when set, else `py-spy` on `PATH`.
pub fn find_py_spy(configured: &Path) -> Option<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return Some(configured.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("py-spy"))
        .find(|candidate| candidate.is_file())
}

/// The stacks of every Python process under `leader` (itself included), as one text; processes
/// py-spy cannot read (not Python) are left out.
pub async fn dump(py_spy: Option<&Path>, leader: i32) -> String {
    let Some(py_spy) = py_spy else {
        return "stacks not available: py-spy not found (install it, or set py_spy in agent.toml)"
            .into();
    };
    let mut pids = vec![leader];
    pids.extend(proctree::descendants(leader).iter().map(|p| p.pid));
    let dumps = async {
        let mut text = String::new();
        let mut failures = Vec::new();
        for pid in pids {
            match dump_one(py_spy, pid).await {
                Ok(out) => text.push_str(&format!("--- pid {pid}\n{out}\n")),
                Err(why) => failures.push(format!("pid {pid}: {why}")),
            }
            if text.len() >= STACKS_MAX_BYTES {
                break;
            }
        }
        if text.is_empty() {
            text = format!("stacks not available: {}", failures.join("; "));
        }
        text
    };
    let text = tokio::time::timeout(TOTAL_TIMEOUT, dumps)
        .await
        .unwrap_or_else(|_| "stacks not available: py-spy took too long".into());
    cut(text, STACKS_MAX_BYTES)
}

async fn dump_one(py_spy: &Path, pid: i32) -> Result<String, String> {
    // Non-blocking: the process is not paused, so a stopped (SIGSTOP) one cannot hang the dump.
    let run = tokio::process::Command::new(py_spy)
        .args(["dump", "--nonblocking", "--pid", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DUMP_TIMEOUT, run)
        .await
        .map_err(|_| "py-spy timed out".to_string())?
        .map_err(|e| format!("cannot run {}: {e}", py_spy.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or("py-spy failed").to_string())
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_py_spy_stacks_are_not_available() {
        let text = dump(None, std::process::id() as i32).await;
        assert!(text.starts_with("stacks not available"), "{text}");
    }

    #[test]
    fn a_configured_py_spy_wins_and_text_is_bounded() {
        assert_eq!(
            find_py_spy(Path::new("/opt/py-spy")),
            Some(PathBuf::from("/opt/py-spy"))
        );
        assert_eq!(cut("ééé".into(), 3), "é");
    }
}
