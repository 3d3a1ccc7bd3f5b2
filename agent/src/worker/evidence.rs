//! What the agent sees of its worker's processes, sampled every heartbeat: the process state,
//! how busy the CPU is, and how long the output has been quiet. On a stall of a synchronous
//! job the coordinator compares every rank's sample to find the one that stopped the gang
//! (`holdfast_core::evidence`). Reads `/proc` only: cheap enough for every heartbeat.

use std::time::Instant;

use holdfast_proto::v1 as pb;

use super::WorkerSnapshot;
use crate::proctree;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux whatever the
/// kernel's own tick rate.
const MS_PER_TICK: u64 = 10;

/// One process's line of `/proc/<pid>/stat`: its state letter and CPU ticks (user + system).
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/<pid>/stat` line; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing one.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// The most telling state of a process tree: one stopped process stops the rank (a stopped
/// child wins over its waiting parent), then a zombie, then one on a CPU, then one in an
/// uninterruptible wait; otherwise the tree sleeps.
fn tree_state(states: &[char]) -> pb::ProcessState {
    let any = |set: &[char]| states.iter().any(|s| set.contains(s));
    if any(&['T', 't']) {
        pb::ProcessState::Stopped
    } else if any(&['Z']) && states.first() == Some(&'Z') {
        pb::ProcessState::Zombie
    } else if any(&['R']) {
        pb::ProcessState::Running
    } else if any(&['D']) {
        pb::ProcessState::Uninterruptible
    } else if states.is_empty() {
        pb::ProcessState::Unspecified
    } else {
        pb::ProcessState::Sleeping
    }
}

/// Samples the running worker; keeps the previous sample to turn CPU time into a rate.
#[derive(Debug, Default)]
pub struct EvidenceSampler {
    /// The worker's pid, its tree's CPU ticks and when they were read.
    previous: Option<(u32, u64, Instant)>,
}

impl EvidenceSampler {
    /// The running worker's evidence now; `None` when no worker runs.
    pub fn sample(&mut self, worker: &WorkerSnapshot) -> Option<pb::WorkerEvidence> {
        let record = worker.record.as_ref()?;
        i32::try_from(record.pid).ok()?;
        let mut pids = Vec::new();
        for (top, _) in record.processes() {
            let Ok(top) = i32::try_from(top) else {
                continue;
            };
            pids.push(top);
            pids.extend(proctree::descendants(top).iter().map(|p| p.pid));
        }
        let stats: Vec<(char, u64)> = pids.iter().filter_map(|&p| stat(p)).collect();
        let states: Vec<char> = stats.iter().map(|(s, _)| *s).collect();
        let ticks: u64 = stats.iter().map(|(_, t)| t).sum();
        let now = Instant::now();
        let cpu_permille = match self.previous {
            Some((pid, before, at)) if pid == record.pid => {
                let wall_ms = now.duration_since(at).as_millis() as u64;
                let cpu_ms = ticks.saturating_sub(before) * MS_PER_TICK;
                (cpu_ms * 1000).checked_div(wall_ms).unwrap_or(0)
            }
            _ => 0,
        };
        self.previous = Some((record.pid, ticks, now));
        Some(pb::WorkerEvidence {
            job_id: record.job_id.clone(),
            generation: record.generation,
            state: tree_state(&states) as i32,
            cpu_permille: u32::try_from(cpu_permille).unwrap_or(u32::MAX),
            output_quiet_ms: worker
                .last_output_at
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_state_and_cpu_ticks() {
        let line =
            "4242 (python3 (a) b) T 1 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(line), Some(('T', 175)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_stopped_process_stops_the_tree() {
        assert_eq!(tree_state(&['S', 'T', 'S']), pb::ProcessState::Stopped);
        assert_eq!(tree_state(&['S', 'R']), pb::ProcessState::Running);
        assert_eq!(tree_state(&['S', 'S']), pb::ProcessState::Sleeping);
        assert_eq!(tree_state(&['S', 'D']), pb::ProcessState::Uninterruptible);
        assert_eq!(tree_state(&[]), pb::ProcessState::Unspecified);
    }

    #[test]
    fn this_process_is_sampled_running_or_sleeping() {
        let worker = WorkerSnapshot {
            record: Some(crate::worker::WorkerRecord::for_test(std::process::id())),
            ..Default::default()
        };
        let mut sampler = EvidenceSampler::default();
        let first = sampler.sample(&worker).expect("a worker runs");
        assert_eq!((first.job_id.as_str(), first.generation), ("j", 3));
        assert!(matches!(
            pb::ProcessState::try_from(first.state),
            Ok(pb::ProcessState::Running | pb::ProcessState::Sleeping)
        ));
        assert_eq!(first.output_quiet_ms, None);
        assert!(sampler.sample(&WorkerSnapshot::default()).is_none());
    }
}
