//! The shipped `slurm` provider scripts (`lifecycle-scripts/providers/slurm/`) against real Slurm
//! daemons, through the coordinator's exec provider: a slurmctld and one slurmd per
//! network-namespace host (a node `work-1` of partition `work`, spares `spare-1` and `spare-2`),
//! authenticated by munge. `fence` drains exactly the fenced node with holdfast's reason (shown
//! by `sinfo -R`), `provision` takes an idle spare that nobody has taken, `release` resumes a
//! repaired node; hostlist expressions and wildcards from agents are refused. Needs root and
//! `scripts/setup/43-slurm.sh` (skipped without them unless HOLDFAST_TEST_STRICT=1).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use holdfast_coordinator::provider::{
    ExecProvider, FenceRequest, ProviderError, ProvisionRequest, ReplacementProvider,
};
use holdfast_testkit::netns::{self, Lab};
use holdfast_testkit::{self as kit, repo_root, KillOnDrop, Scratch};

/// The controller's host.
const CONTROLLER: &str = "slurmctl";
/// The Slurm nodes (each a host of the lab) and their partitions.
const NODES: [(&str, &str); 3] = [
    ("work-1", "work"),
    ("spare-1", "spare"),
    ("spare-2", "spare"),
];

/// What the Slurm lab needs, or why it cannot run here.
fn available() -> Result<(), String> {
    netns::available()?;
    for tool in [
        "slurmctld",
        "slurmd",
        "scontrol",
        "sinfo",
        "munged",
        "mungekey",
        "nsenter",
    ] {
        kit::host::tool(tool, "run scripts/setup/43-slurm.sh")?;
    }
    Ok(())
}

/// A Slurm cluster on lab hosts; its daemons die with it.
struct SlurmLab {
    lab: Lab,
    conf: PathBuf,
    _daemons: Vec<KillOnDrop>,
}

impl SlurmLab {
    fn start(dir: &Path) -> SlurmLab {
        let mut lab = Lab::create().expect("creating the lab");
        let controller = lab.add_host(CONTROLLER).expect("adding the controller");
        let mut hosts = BTreeMap::new();
        for (name, _) in NODES {
            hosts.insert(name, lab.add_host(name).expect("adding a node").addr);
        }
        let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let spawn = |command: &mut Command, name: &str| {
            let log = log(name);
            KillOnDrop(
                command
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {name}: {e}")),
            )
        };
        let mut daemons = Vec::new();

        // munge with its own key and socket: nothing of the machine's own is used.
        let key = dir.join("munge.key");
        let ran = kit::run(Command::new("mungekey").arg("-c").arg("-k").arg(&key));
        assert!(ran.ok(), "mungekey: {}", ran.stderr);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.join("munge.socket");
        daemons.push(spawn(
            Command::new("munged")
                .args(["-F", "-f"])
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir.join("munged.pid").display()))
                .arg(format!("--seed-file={}", dir.join("munge.seed").display()))
                .arg(format!("--log-file={}", dir.join("munged.log").display())),
            "munged-out",
        ));
        kit::wait_for_blocking(Duration::from_secs(10), || {
            kit::check(socket.exists(), || "munged has no socket yet".into())
        });

        // slurmctld checks that it runs on the host SlurmctldHost names: this machine's name,
        // reached at the controller's lab address.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("this machine's host name")
            .trim()
            .to_string();
        let d = dir.display();
        let mut conf = format!(
            "ClusterName=holdfast\n\
             SlurmctldHost={hostname}({ctl})\n\
             SlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool/%n\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/spool/%n.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd-%n.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nSelectType=select/linear\n\
             MpiDefault=none\nSwitchType=switch/none\nReturnToService=2\n\
             SlurmctldTimeout=10\nSlurmdTimeout=30\n",
            ctl = controller.addr,
            socket = socket.display(),
        );
        for (name, _) in NODES {
            conf += &format!(
                "NodeName={name} NodeAddr={} CPUs=1 State=UNKNOWN\n",
                hosts[name]
            );
        }
        for partition in ["work", "spare"] {
            let members: Vec<&str> = NODES
                .iter()
                .filter(|(_, p)| *p == partition)
                .map(|(n, _)| *n)
                .collect();
            conf += &format!(
                "PartitionName={partition} Nodes={} State=UP\n",
                members.join(",")
            );
        }
        let conf_path = dir.join("slurm.conf");
        std::fs::write(&conf_path, conf).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        // nsenter enters the host's network namespace only: `ip netns exec` would also remount
        // /sys, hiding the cgroup mounts slurmd looks for at start.
        let on = |host: &str, program: &str| {
            let netns = &lab.host(host).expect("a lab host").netns;
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(program)
                .env("SLURM_CONF", &conf_path);
            command
        };
        daemons.push(spawn(
            on(CONTROLLER, "slurmctld").args(["-D", "-c", "-i"]),
            "slurmctld-out",
        ));
        for (name, _) in NODES {
            std::fs::create_dir_all(dir.join("spool").join(name)).unwrap();
            daemons.push(spawn(
                on(name, "slurmd").args(["-D", "-N", name]),
                &format!("slurmd-{name}-out"),
            ));
        }
        let slurm = SlurmLab {
            lab,
            conf: conf_path,
            _daemons: daemons,
        };
        kit::wait_for_blocking(Duration::from_secs(60), || {
            let states = slurm.states();
            kit::check(
                NODES
                    .iter()
                    .all(|(n, _)| states.get(*n).map(String::as_str) == Some("idle")),
                || format!("nodes not all idle yet: {states:?}"),
            )
        });
        slurm
    }

    /// A Slurm client command, run on the controller's host.
    fn client(&self, program: &str) -> Command {
        let netns = &self.lab.host(CONTROLLER).expect("the controller").netns;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(program)
            .env("SLURM_CONF", &self.conf);
        command
    }

    /// Each node's state as `sinfo` shows it (`idle`, `drain`, …; `*` = not responding).
    fn states(&self) -> BTreeMap<String, String> {
        let ran = kit::run(self.client("sinfo").args(["-h", "-N", "-o", "%n %t"]));
        ran.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_string(), s.trim().to_string()))
            .collect()
    }

    /// `sinfo -R`: the reason of every drained or down node, by node.
    fn reasons(&self) -> BTreeMap<String, String> {
        let ran = kit::run(self.client("sinfo").args(["-R", "-h", "-o", "%N|%E"]));
        ran.stdout
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect()
    }

    /// Runs a provider call with the test thread in the controller's network namespace, where
    /// the scripts' Slurm commands reach slurmctld.
    fn on_controller<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let _inside = self.lab.enter(CONTROLLER).expect("entering the controller");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(call)
    }
}

fn fence_of(node: &str, hostname: &str) -> FenceRequest {
    FenceRequest {
        node_id: node.into(),
        hostname: hostname.into(),
        address: String::new(),
        reason: "xid 79: GPU has fallen off the bus".into(),
    }
}

#[test]
fn slurm_scripts_drain_take_and_release_exactly_the_named_nodes() {
    if kit::require(available()).is_none() {
        return;
    }
    let dir = Scratch::new("provider-slurm");
    let started = std::time::Instant::now();
    let slurm = SlurmLab::start(&dir);
    println!("slurm lab up in {:.1} s", started.elapsed().as_secs_f64());

    let provider_dir = dir.join("provider");
    std::fs::create_dir_all(&provider_dir).unwrap();
    for script in ["provision", "fence", "release"] {
        let to = provider_dir.join(script);
        std::fs::copy(
            repo_root()
                .join("lifecycle-scripts/providers/slurm")
                .join(script),
            &to,
        )
        .unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // "Starting the agent" on a node records it; {host} arrives as an argument.
    let started_log = dir.join("started");
    // This file's only test: the scripts inherit this process's environment.
    std::env::set_var("SLURM_CONF", &slurm.conf);
    std::env::set_var("HOLDFAST_SLURM_SPARE_PARTITION", "spare");
    std::env::set_var(
        "HOLDFAST_SLURM_START",
        format!("echo {{host}} >> {}", started_log.display()),
    );
    let provider = ExecProvider {
        dir: provider_dir.clone(),
        timeout: Duration::from_secs(30),
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
        reasons["work-1"].contains("holdfast fenced node-7")
            && reasons["work-1"].contains("xid 79"),
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
}
