//! `holdfast launch` against a real local cluster: plain event and status lines when stdout is a
//! pipe; a status line redrawn in place when it is a terminal (a pseudo-terminal made by
//! util-linux `script`).

use std::time::Duration;

use holdfast_testkit::{self as kit, holdfast_exe, local_cluster, python, Scratch, Train};

fn launch_args(addr: &str, python: &str, steps: u64) -> Vec<String> {
    let train = Train {
        python: python.into(),
        steps,
        ..Default::default()
    };
    let script = kit::repo_root().join("examples/train_demo.py");
    ["launch", "--nodes", "2", "--coordinator", addr, "--"]
        .map(String::from)
        .into_iter()
        .chain(train.command(&script))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_shows_live_progress_on_a_terminal_and_plain_lines_otherwise() {
    let exe = holdfast_exe!();
    let Some(python) = python() else { return };
    let dir = Scratch::new("launch-test");
    let cluster = local_cluster(exe, &dir, &[], 2, 0).await;

    // Not a terminal: event lines and plain status lines, no cursor control.
    let addr = cluster.addr.clone();
    let args = launch_args(&addr, &python, 70);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        kit::run_async(tokio::process::Command::new(exe).args(&args)),
    )
    .await
    .expect("launch finished in time");
    let text = &out.stdout;
    assert!(out.ok(), "{text}\n{}", out.stderr);
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
    let command = std::iter::once(exe.display().to_string())
        .chain(launch_args(&addr, &python, 30))
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
    match out.map_err(|e| format!("util-linux script is needed for a pseudo-terminal: {e}")) {
        Err(why) => kit::skip(&why),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_refuses_a_native_launcher_of_no_ranks_or_too_many_naming_the_field() {
    let exe = holdfast_exe!();
    let dir = Scratch::new("launch-nproc");
    let cluster = local_cluster(exe, &dir, &[], 1, 0).await;
    for (flags, expected) in [
        (
            &["--nproc-per-node", "0"][..],
            "nproc_per_node must be 1 to 256, got 0",
        ),
        (
            &["--nproc-per-node", "300"][..],
            "nproc_per_node must be 1 to 256, got 300",
        ),
        (
            &["--warm-imports"][..],
            "warm_imports needs the native launcher",
        ),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            kit::run_async(
                tokio::process::Command::new(exe)
                    .args(["launch", "--nodes", "1", "--coordinator", &cluster.addr])
                    .args(flags)
                    .args(["--", "python3", "train.py"]),
            ),
        )
        .await
        .expect("launch answered in time");
        assert!(!out.ok(), "{flags:?} was accepted: {}", out.stdout);
        assert!(out.stderr.contains(expected), "{flags:?}: {}", out.stderr);
    }
}
