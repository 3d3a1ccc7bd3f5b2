//! A worker's process tree, read from `/proc`. Launchers start their workers in sessions of
//! their own (torchrun does), out of reach of a signal to the launcher's process group: stopping a
//! job must find them by parentage, and must do so before the launcher dies, since its orphans
//! are then re-parented away.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process, identified by its pid and its start time (so a reused pid is never mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    start_ticks: u64,
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Every descendant of `pid` alive now (not `pid` itself), parents before children.
pub fn descendants(pid: i32) -> Vec<Process> {
    let mut found = Vec::new();
    let mut queue = children(pid);
    while let Some(next) = queue.pop() {
        if found.iter().any(|p: &Process| p.pid == next) {
            continue;
        }
        if let Some(start_ticks) = start_ticks(next) {
            found.push(Process {
                pid: next,
                start_ticks,
            });
            queue.extend(children(next));
        }
    }
    found
}

/// Sends `signal` to each of `processes` that is still the same process.
pub fn signal_all(processes: &[Process], signal: Signal) {
    for p in processes {
        if start_ticks(p.pid) == Some(p.start_ticks) {
            let _ = kill(Pid::from_raw(p.pid), signal);
        }
    }
}

/// How many of `processes` are still alive (zombies count as gone).
pub fn alive(processes: &[Process]) -> usize {
    processes
        .iter()
        .filter(|p| {
            start_ticks(p.pid) == Some(p.start_ticks)
                && !std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).is_ok_and(|s| {
                    s.rfind(')')
                        .is_some_and(|i| s[i + 1..].trim_start().starts_with('Z'))
                })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn finds_a_grandchild_in_another_session_and_kills_it() {
        // A launcher whose worker runs in a session of its own, as torchrun's do.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 300 & wait"])
            .spawn()
            .expect("sh");
        let deadline = Instant::now() + Duration::from_secs(5);
        let tree = loop {
            let tree = descendants(leader.id() as i32);
            if !tree.is_empty() {
                break tree;
            }
            assert!(Instant::now() < deadline, "the worker never appeared");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(alive(&tree), 1);
        signal_all(&tree, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&tree) > 0 {
            assert!(Instant::now() < deadline, "the worker outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = leader.kill();
        let _ = leader.wait();
    }

    #[test]
    fn a_process_without_children_has_no_descendants() {
        assert!(descendants(std::process::id() as i32 + 1_000_000).is_empty());
    }
}
