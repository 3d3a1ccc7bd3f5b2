//! The job most tests run: the demo's training script (`examples/train_demo.py`, standard
//! library only) with file checkpoints.

use std::path::{Path, PathBuf};

use holdfast_cli::demo::schedule_args;
use holdfast_proto::v1 as pb;

/// The shape of a training job.
#[derive(Debug, Clone)]
pub struct Train {
    /// The interpreter (see [`crate::python`]).
    pub python: String,
    pub nodes: u32,
    pub steps: u64,
    pub step_time_s: f64,
    pub ckpt_every: u64,
    /// The ranks wait for each other at every step (a barrier in the job's directory), as
    /// collective training does; false: independent ranks.
    pub synchronous: bool,
}

impl Default for Train {
    fn default() -> Self {
        Train {
            python: "python3".into(),
            nodes: 2,
            steps: 80,
            step_time_s: 0.1,
            ckpt_every: 10,
            synchronous: true,
        }
    }
}

impl Train {
    /// `nodes` ranks stepping `steps` times, one step every `step_time_s`; the rest default.
    pub fn paced(nodes: u32, steps: u64, step_time_s: f64) -> Train {
        Train {
            nodes,
            steps,
            step_time_s,
            ..Default::default()
        }
    }

    /// The command line (script at `script`).
    pub fn command(&self, script: &Path) -> Vec<String> {
        let mut command = vec![self.python.clone(), script.display().to_string()];
        command.extend(schedule_args(self.steps, self.step_time_s, self.ckpt_every));
        command
    }

    /// The job, with the script written into `dir` and its checkpoints under
    /// [`checkpoint_dir`]`(dir)`.
    pub fn spec(&self, dir: &Path) -> pb::JobSpec {
        let script =
            holdfast_cli::demo::write_train_script(dir).expect("writing the training script");
        // Synchronous ranks, as collective training is: a rank that stops stops them all.
        let mut command = self.command(&script);
        if self.synchronous {
            command.extend(["--sync-dir".into(), dir.join("sync").display().to_string()]);
        }
        pb::JobSpec {
            command,
            nodes: self.nodes,
            checkpoint_uri: format!("file://{}", checkpoint_dir(dir).display()),
            ..Default::default()
        }
    }
}

/// [`Train`] of `nodes` nodes and `steps` steps (0.1 s each, a checkpoint every 10).
pub fn train_spec(dir: &Path, nodes: u32, steps: u64) -> pb::JobSpec {
    Train {
        nodes,
        steps,
        ..Default::default()
    }
    .spec(dir)
}

/// Where a [`Train`] job of `dir` writes its checkpoints (`step-N/`, `COMPLETE` markers).
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// Asserts that `done` succeeded after exactly one relaunch (generation 2) with exactly one
/// incident, and returns that incident. `context` (the case, a log) goes into every failure.
pub fn assert_recovered_once<'a>(
    done: &pb::Job,
    incidents: &'a [pb::Incident],
    context: &str,
) -> &'a pb::Incident {
    assert_eq!(done.state, "succeeded", "{context}: {done:?}");
    assert_eq!(
        done.generation, 2,
        "{context}: relaunched more or less than once: {done:?}"
    );
    assert_eq!(incidents.len(), 1, "{context}: {incidents:?}");
    &incidents[0]
}
