//! The shipped `slurm` provider scripts (`lifecycle-scripts/providers/slurm/`) against real Slurm
//! daemons, through the coordinator's exec provider: a slurmctld and one slurmd per
//! network-namespace host (a node `work-1` of partition `work`, spares `spare-1` and `spare-2`),
//! authenticated by munge. `fence` drains exactly the fenced node with holdfast's reason (shown
//! by `sinfo -R`), `provision` takes an idle spare that nobody has taken, `release` resumes a
//! repaired node; hostlist expressions and wildcards from agents are refused. Needs root and
//! `scripts/setup/43-slurm.sh` (skipped without them unless HOLDFAST_TEST_STRICT=1).

use std::process::Command;
use std::time::Duration;

use holdfast_coordinator::provider::{
    ExecProvider, FenceRequest, ProviderError, ProvisionRequest, ReplacementProvider,
};
use holdfast_testkit::slurm::{self, SlurmLab, CONTROLLER, NODES};
use holdfast_testkit::{self as kit, Scratch};

fn fence_of(node: &str, hostname: &str) -> FenceRequest {
    FenceRequest {
        node_id: node.into(),
        hostname: hostname.into(),
        address: String::new(),
        reason: "xid 79: GPU has fallen off the bus".into(),
        incident_id: Some(42),
    }
}

#[test]
fn slurm_scripts_drain_take_and_release_exactly_the_named_nodes() {
    if kit::require(slurm::available()).is_none() {
        return;
    }
    let dir = Scratch::new("provider-slurm");
    let started = std::time::Instant::now();
    let slurm = SlurmLab::start(&dir);
    println!("slurm lab up in {:.1} s", started.elapsed().as_secs_f64());

    let provider_dir = kit::provider_scripts(&dir, "slurm");
    // "Starting the agent" on a node records it; {host} arrives as an argument.
    let started_log = dir.join("started");
    // This file's only test: the scripts inherit this process's environment.
    std::env::set_var("SLURM_CONF", &slurm.conf);
    std::env::set_var("HOLDFAST_SLURM_SPARE_PARTITION", "spare");
    // Each start leaves a process running in the background, as an agent does: it must not
    // keep the provision lock (the next provision would wait for it).
    let background = dir.join("background.pids");
    std::env::set_var(
        "HOLDFAST_SLURM_START",
        format!(
            "echo {{host}} >> {}; sleep 60 >/dev/null 2>&1 & echo $! >> {}",
            started_log.display(),
            background.display()
        ),
    );
    let provider = ExecProvider {
        dir: provider_dir.clone(),
        timeout: Duration::from_secs(20),
        attempts: 1,
        retry_delay: Duration::from_millis(100),
    };

    // Hostlist expressions, wildcards and shell syntax are refused before Slurm sees them.
    let witness = dir.join("pwned");
    let injection = format!("$(touch {})", witness.display());
    for hostile in [
        "spare-[1-2]",
        "spare-1,spare-2",
        "*",
        "ALL",
        &injection,
        "-h",
    ] {
        let result = slurm.on_controller(provider.fence(fence_of("node-x", hostile)));
        match result {
            Err(ProviderError::Failed { status, output, .. }) => {
                assert_ne!(status, "exit code 0", "{hostile}: {output}");
                assert!(
                    output.contains("refusing") || output.contains("no node"),
                    "{hostile}: {output}"
                );
            }
            other => panic!("{hostile} was not refused: {other:?}"),
        }
    }
    assert!(!witness.exists(), "a host name ran as shell code");
    let states = slurm.states();
    assert!(
        NODES.iter().all(|(n, _)| states[*n] == "idle"),
        "a refused fence drained something: {states:?}"
    );

    // Fence drains exactly that node, with holdfast's reason; the agent may report a full name.
    let out = slurm
        .on_controller(provider.fence(fence_of("node-7", "work-1.cluster.example")))
        .unwrap();
    assert!(out.contains("drained work-1"), "{out}");
    let reasons = slurm.reasons();
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        ["work-1"],
        "{reasons:?}"
    );
    assert!(
        reasons["work-1"].starts_with("holdfast fenced node-7: incident 42: xid 79"),
        "{reasons:?}"
    );
    let states = slurm.states();
    assert!(states["work-1"].starts_with("drain"), "{states:?}");
    assert_eq!(
        (states["spare-1"].as_str(), states["spare-2"].as_str()),
        ("idle", "idle")
    );

    // Provision takes an idle spare nobody has taken, then the other, then finds none left.
    let request = |request_id| ProvisionRequest {
        request_id,
        job_id: "job-1".into(),
        count: 1,
    };
    let first = slurm.on_controller(provider.provision(request(1))).unwrap();
    let second = slurm.on_controller(provider.provision(request(2))).unwrap();
    let mut taken = [first.hosts.clone(), second.hosts.clone()].concat();
    taken.sort();
    assert_eq!(taken, ["spare-1", "spare-2"], "{first:?} {second:?}");
    let none = slurm.on_controller(provider.provision(request(3)));
    match none {
        Err(ProviderError::Failed { output, .. }) => {
            assert!(output.contains("already taken"), "{output}")
        }
        other => panic!("a taken spare was handed out again: {other:?}"),
    }
    let started_hosts = std::fs::read_to_string(&started_log).unwrap_or_default();
    assert_eq!(started_hosts.lines().count(), 2, "{started_hosts}");

    // `release` (an operator's, after a repair) refuses expressions, resumes the drained node
    // and gives a taken spare back: provision takes spare-1 again, never the still taken spare-2.
    let release = |host: &str| {
        let netns = slurm.lab.host(CONTROLLER).unwrap().netns.clone();
        kit::run(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(provider_dir.join("release"))
                .arg(host)
                .env("SLURM_CONF", &slurm.conf),
        )
    };
    let refused = release("spare-[1-2]");
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    for host in ["spare-1", "work-1"] {
        let ran = release(host);
        assert!(ran.ok(), "release {host}: {}", ran.stderr);
    }
    // The repaired node is back: no reason left, idle again (RESUME).
    kit::wait_for_blocking(Duration::from_secs(20), || {
        let states = slurm.states();
        kit::check(
            states["work-1"] == "idle" && slurm.reasons().is_empty(),
            || format!("work-1 not resumed: {states:?} {:?}", slurm.reasons()),
        )
    });
    let again = slurm.on_controller(provider.provision(request(4))).unwrap();
    assert_eq!(again.hosts, ["spare-1"]);
    let pids = std::fs::read_to_string(&background).unwrap_or_default();
    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
