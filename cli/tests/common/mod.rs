//! Helpers shared by the integration tests of lifecycle, providers and agent restarts.

use std::path::Path;

use holdfast_cli::demo::TRAIN_SCRIPT;
use holdfast_proto::v1 as pb;

/// The demo's training script written into `dir`, as a job of `nodes` nodes and `steps` steps
/// (0.1 s each, a checkpoint every 10) checkpointing under `dir/ckpt`.
pub fn train_spec(dir: &Path, nodes: u32, steps: u64) -> pb::JobSpec {
    let script = dir.join("train.py");
    std::fs::write(&script, TRAIN_SCRIPT).unwrap();
    pb::JobSpec {
        command: vec![
            "python3".into(),
            script.display().to_string(),
            "--steps".into(),
            steps.to_string(),
            "--step-time".into(),
            "0.1".into(),
            "--ckpt-every".into(),
            "10".into(),
        ],
        nodes,
        checkpoint_uri: format!("file://{}", dir.join("ckpt").display()),
        ..Default::default()
    }
}
