//! `holdfast launch` against a real local cluster: plain event and status lines when stdout is a
//! pipe; a status line redrawn in place when it is a terminal (a pseudo-terminal made by
//! util-linux `script`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use holdfast_cli::demo::LocalCluster;

const EXE: &str = env!("CARGO_BIN_EXE_holdfast");

fn skip_or_fail(why: &str) {
    if std::env::var("HOLDFAST_TEST_STRICT").is_ok_and(|v| v == "1") {
        panic!("launch test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

fn launch_args(addr: &str, python: &str, steps: u32) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train_demo.py");
    [
        "launch",
        "--nodes",
        "2",
        "--coordinator",
        addr,
        "--",
        python,
        &script.display().to_string(),
        "--steps",
        &steps.to_string(),
        "--step-time",
        "0.1",
        "--ckpt-every",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_shows_live_progress_on_a_terminal_and_plain_lines_otherwise() {
    let Some(python) = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        return skip_or_fail("no python3 for the training script");
    };
    let dir = std::env::temp_dir().join(format!("holdfast-launch-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = LocalCluster::start(Path::new(EXE), &dir, &[])
        .await
        .expect("coordinator starts");
    cluster.start_agent("node-1", "worker", &[]).unwrap();
    cluster.start_agent("node-2", "worker", &[]).unwrap();
    cluster
        .wait_ready(2, Duration::from_secs(30))
        .await
        .expect("agents ready");

    // Not a terminal: event lines and plain status lines, no cursor control.
    let addr = cluster.addr.clone();
    let args = launch_args(&addr, python, 70);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(EXE).args(&args).output(),
    )
    .await
    .expect("launch finished in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "no cursor control on a pipe: {text:?}"
    );
    // Event lines as they happen (the first ones may precede the watch; the exits never do).
    assert!(
        text.contains("worker of job-1 generation 1 on node-1 exited (code 0)"),
        "{text}"
    );
    assert!(text.contains("job job-1 succeeded at step 70"), "{text}");
    let status: Vec<&str> = text.lines().filter(|l| l.contains(" steps/s · ")).collect();
    assert!(
        !status.is_empty(),
        "a plain status line at least every 5 s: {text}"
    );
    assert!(
        status
            .iter()
            .any(|l| l.contains("gen 1") && l.contains("nodes 2/2 healthy")),
        "{text}"
    );

    // A terminal: the status line is redrawn in place.
    let command = std::iter::once(EXE.to_string())
        .chain(launch_args(&addr, python, 30))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .output(),
    )
    .await
    .expect("launch on a terminal finished in time");
    match out {
        Err(e) => skip_or_fail(&format!(
            "util-linux script is needed for a pseudo-terminal: {e}"
        )),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "{text}");
            let redraws = text
                .matches("\r\x1b[2Kjob-2 running · gen 1 · step ")
                .count();
            assert!(
                redraws >= 3,
                "status redrawn in place as steps advance: {text:?}"
            );
            assert!(text.contains("steps/s · ckpt"), "{text:?}");
            assert!(text.contains("job job-2 succeeded at step 30"), "{text:?}");
        }
    }
    cluster.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
