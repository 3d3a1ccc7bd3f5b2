//! `<state_dir>/worker.json`: the record of the running worker, so operators (and a restarted
//! agent) can find its process group; and the start time that tells a live worker from a
//! reused pid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Under the native launcher, every local rank's process (the first is the leader, `pid`):
    /// they share its process group, and the worker runs while any of them does. Empty for a
    /// command that is its own launcher.
    #[serde(default)]
    pub ranks: Vec<RankProcess>,
}

/// One local rank's process under the native launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankProcess {
    pub local_rank: u32,
    pub pid: u32,
    /// Its start time, as [`WorkerRecord::start_ticks`].
    pub start_ticks: u64,
}

impl WorkerRecord {
    /// The worker's top processes with their start times: the leader, and every local rank.
    pub fn processes(&self) -> Vec<(u32, u64)> {
        let mut all = vec![(self.pid, self.start_ticks)];
        all.extend(
            self.ranks
                .iter()
                .filter(|r| r.pid != self.pid)
                .map(|r| (r.pid, r.start_ticks)),
        );
        all
    }

    /// Whether any of the worker's top processes still runs.
    pub fn is_running(&self) -> bool {
        self.processes()
            .into_iter()
            .any(|(pid, ticks)| pid != 0 && is_running(pid, ticks))
    }
}

/// Where the record lives in the agent's state directory.
fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("worker.json")
}

/// The recorded worker, if any; an unreadable record is logged and ignored.
pub(super) fn read(state_dir: &Path) -> Option<WorkerRecord> {
    let path = path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!("ignoring unreadable {}: {e}", path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            None
        }
    }
}

/// Records `record` as the running worker (`None`: no worker runs). The record is replaced
/// whole and durably: a crash mid-write must not leave a restarted agent a torn record, and so
/// lose track of a worker that still runs. A failure is logged.
pub(super) fn write(state_dir: &Path, record: Option<&WorkerRecord>) {
    let path = path(state_dir);
    let result = match record {
        Some(r) => serde_json::to_vec_pretty(r)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::durable::write(&path, &bytes)),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    };
    if let Err(e) = result {
        tracing::warn!("cannot update {}: {e}", path.display());
    }
}

/// Whether `pid` still runs the process that started at `start_ticks` (0: unknown, any live
/// process will do), not a zombie nor a later process that reused the pid.
pub(super) fn is_running(pid: u32, start_ticks: u64) -> bool {
    self::start_ticks(pid).is_some_and(|t| start_ticks == 0 || t == start_ticks)
}

/// A live (not zombie) process's start time in clock ticks after boot, from /proc/PID/stat.
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
impl WorkerRecord {
    /// A record of generation 3 of job `j` for process `pid`, for tests.
    pub(crate) fn for_test(pid: u32) -> WorkerRecord {
        WorkerRecord {
            job_id: "j".into(),
            generation: 3,
            pid,
            node_rank: 0,
            log_file: Default::default(),
            progress_file: Default::default(),
            progress_regex: String::new(),
            grace_ms: 0,
            start_ticks: 0,
            ranks: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_written_whole_read_back_and_cleared() {
        let dir = crate::testdir::Scratch::new("record");
        assert_eq!(read(&dir), None);
        let record = WorkerRecord {
            job_id: "j".into(),
            generation: 3,
            pid: 42,
            node_rank: 1,
            log_file: dir.join("logs/j-g3-r1.log"),
            progress_file: dir.join("progress-j-g3"),
            progress_regex: "step (\\d+)".into(),
            grace_ms: 500,
            start_ticks: 7,
            ranks: vec![
                RankProcess {
                    local_rank: 0,
                    pid: 42,
                    start_ticks: 7,
                },
                RankProcess {
                    local_rank: 1,
                    pid: 43,
                    start_ticks: 8,
                },
            ],
        };
        write(&dir, Some(&record));
        assert_eq!(read(&dir), Some(record));
        assert!(!dir.join("worker.json.tmp").exists());
        write(&dir, None);
        assert_eq!(read(&dir), None);
        write(&dir, None);
        std::fs::write(path(&dir), b"{ torn").unwrap();
        assert_eq!(read(&dir), None, "an unreadable record is ignored");
        // A record of an older agent, without the later fields, still reads.
        std::fs::write(
            path(&dir),
            br#"{"job_id":"j","generation":1,"pid":9,"node_rank":0}"#,
        )
        .unwrap();
        assert_eq!(read(&dir).map(|r| (r.pid, r.start_ticks)), Some((9, 0)));
    }

    #[test]
    fn a_running_process_is_told_from_a_reused_pid() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap();
        assert!(is_running(me, ticks));
        assert!(
            is_running(me, 0),
            "no start time recorded: any live process"
        );
        assert!(
            !is_running(me, ticks + 1),
            "another start time: the pid was reused"
        );
        assert!(!is_running(0, 0));
    }
}
