//! What an operator installs from `deploy/`, exercised so it cannot rot: the example configs
//! parse with the real loaders and set every key; the systemd units pass
//! `systemd-analyze verify`; `install.sh` lays everything out; and the daemons speak systemd's
//! notify protocol (READY, WATCHDOG, STOPPING) over a real `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_agent::AgentConfig;
use holdfast_coordinator::CoordinatorConfig;
use holdfast_testkit::{self as kit, holdfast_exe, repo_root as repo, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn exe() -> &'static Path {
    holdfast_exe!()
}

fn tmp(name: &str) -> Scratch {
    Scratch::new(&format!("deploy-{name}"))
}

/// Keys of a config's defaults that the example file does not set on a line of its own.
fn keys_missing(defaults: serde_json::Value, example: &str) -> Vec<String> {
    let set: Vec<String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    defaults
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !set.contains(k))
        .cloned()
        .collect()
}

#[test]
fn example_configs_parse_with_the_real_loaders_and_set_every_key() {
    let coordinator_path = repo().join("deploy/coordinator.toml");
    let coordinator = CoordinatorConfig::load(&coordinator_path).unwrap();
    assert_eq!(coordinator.bootstrap_script, "on-create");
    let text = std::fs::read_to_string(&coordinator_path).unwrap();
    let missing = keys_missing(
        serde_json::to_value(CoordinatorConfig::default()).unwrap(),
        &text,
    );
    assert!(
        missing.is_empty(),
        "deploy/coordinator.toml lacks (and so does not document) {missing:?}"
    );

    let agent_path = repo().join("deploy/agent.toml");
    let text = std::fs::read_to_string(&agent_path).unwrap();
    let agent = AgentConfig::from_toml(&text, "deploy/agent.toml").unwrap();
    assert_eq!(
        agent.script_dir,
        Path::new("/usr/local/lib/holdfast/lifecycle-scripts")
    );
    let missing = keys_missing(serde_json::to_value(AgentConfig::default()).unwrap(), &text);
    assert!(
        missing.is_empty(),
        "deploy/agent.toml lacks (and so does not document) {missing:?}"
    );

    // A config the daemon refuses says file, line and key, and the daemon exits non-zero.
    let dir = tmp("badconfig");
    let bad = dir.join("coordinator.toml");
    std::fs::write(
        &bad,
        "# site overrides\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1500\n",
    )
    .unwrap();
    let out = kit::run(
        Command::new(exe())
            .args(["coordinator", "--listen", "127.0.0.1:0", "--config"])
            .arg(&bad),
    );
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("coordinator.toml line 3: heartbeat_timeout_ms:"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_shipped_script_is_executable_and_parses() {
    let mut scripts = Vec::new();
    let mut dirs = vec![repo().join("lifecycle-scripts"), repo().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read(&path).unwrap().starts_with(b"#!") {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 10, "{scripts:?}");
    for script in scripts {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} is not executable", script.display());
        let text = std::fs::read_to_string(&script).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let out = if first.contains("python") {
            let parse = "import ast, sys; ast.parse(open(sys.argv[1]).read())";
            Command::new("python3")
                .args(["-c", parse])
                .arg(&script)
                .output()
                .unwrap()
        } else {
            let shell = if first.contains("bash") { "bash" } else { "sh" };
            Command::new(shell).arg("-n").arg(&script).output().unwrap()
        };
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let hint = "scripts/setup/50-systemd.sh installs it";
    if kit::require(kit::host::tool("systemd-analyze", hint)).is_none() {
        return;
    }
    let dir = tmp("units");
    for unit in ["holdfast-agent.service", "holdfast-coordinator.service"] {
        let text = std::fs::read_to_string(repo().join("deploy").join(unit)).unwrap();
        assert!(
            text.contains("\nType=notify\n") && text.contains("\nRestart=always\n"),
            "{unit}"
        );
        assert!(text.contains("\nWatchdogSec="), "{unit}");
        // verify checks that ExecStart exists: point it at the binary under test.
        let text = text.replace("/usr/local/bin/holdfast", &exe().display().to_string());
        std::fs::write(dir.join(unit), text).unwrap();
    }
    let agent = std::fs::read_to_string(repo().join("deploy/holdfast-agent.service")).unwrap();
    assert!(
        agent.contains("\nKillMode=process\n"),
        "workers must outlive an agent restart"
    );
    let out = kit::run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("holdfast-agent.service"))
            .arg(dir.join("holdfast-coordinator.service")),
    );
    assert!(
        out.ok() && out.stderr.trim().is_empty(),
        "systemd-analyze verify: {}",
        out.stderr
    );
}

#[test]
fn install_script_lays_out_binary_scripts_configs_and_units_and_keeps_edited_configs() {
    let root = tmp("install");
    let run = || {
        kit::run(
            Command::new(repo().join("deploy/install.sh"))
                .arg("--binary")
                .arg(exe())
                .env("DESTDIR", &*root),
        )
    };
    let out = run();
    assert!(out.ok(), "{}", out.stderr);
    for file in [
        "usr/local/bin/holdfast",
        "usr/local/lib/holdfast/lifecycle-scripts/on-create",
        "usr/local/lib/holdfast/lifecycle-scripts/on-fence",
        "usr/local/lib/holdfast/lifecycle-scripts/health/host",
        "etc/holdfast/agent.toml",
        "etc/holdfast/coordinator.toml",
        "etc/systemd/system/holdfast-agent.service",
        "etc/systemd/system/holdfast-coordinator.service",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("usr/local/lib/holdfast/lifecycle-scripts/health/host"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "scripts stay executable");
    // A second run keeps the operator's edited config and puts the example beside it.
    std::fs::write(
        root.join("etc/holdfast/agent.toml"),
        "node_id = \"gpu-7\"\n",
    )
    .unwrap();
    assert!(run().ok());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/holdfast/agent.toml")).unwrap(),
        "node_id = \"gpu-7\"\n"
    );
    assert!(root.join("etc/holdfast/agent.toml.new").is_file());
}

/// Reads datagrams until one equals `want` or `within` passes; returns all read.
fn wait_for(socket: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want:?} within {within:?}; got {seen:?}");
}

#[test]
fn daemons_notify_systemd_ready_watchdog_and_stopping() {
    let dir = tmp("notify");
    for role in ["coordinator", "agent"] {
        let socket_path = dir.join(format!("{role}.notify"));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut command = Command::new(exe());
        match role {
            "coordinator" => command
                .args(["coordinator", "--listen", "127.0.0.1:0", "--state"])
                .arg(dir.join("coordinator.redb")),
            // The agent is ready once it runs, whether or not a coordinator answers.
            _ => command
                .args([
                    "agent",
                    "--coordinator",
                    "http://127.0.0.1:9",
                    "--node-id",
                    "n1",
                    "--state-dir",
                ])
                .arg(dir.join("agent-state")),
        };
        let mut child = command
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&socket, "READY=1", Duration::from_secs(20));
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        wait_for(&socket, "STOPPING=1", Duration::from_secs(10));
        let status = kit::wait_for_blocking(Duration::from_secs(10), || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| format!("{role} did not exit after SIGTERM"))
        });
        assert!(status.success(), "{role} exited with {status}");
    }
}
