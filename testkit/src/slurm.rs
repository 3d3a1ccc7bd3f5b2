//! A Slurm cluster on [`netns`](crate::netns) hosts for the slurm provider's tests: munge with
//! its own key and socket, a slurmctld on host `slurmctl` and one `slurmd -N NAME` per node host,
//! from a generated slurm.conf (`proctrack/linuxproc` and `task/none`: no cgroups needed). The
//! daemons run under `nsenter --net` rather than `ip netns exec`, which would remount /sys and hide
//! the cgroup mounts slurmd looks for at start. Needs root and `scripts/setup/43-slurm.sh`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::Lab;
use crate::KillOnDrop;

/// The controller's host.
pub const CONTROLLER: &str = "slurmctl";
/// The Slurm nodes (each a host of the lab) and their partitions; partition [`ALL`] holds them
/// all.
pub const NODES: [(&str, &str); 3] = [
    ("work-1", "work"),
    ("spare-1", "spare"),
    ("spare-2", "spare"),
];

/// The partition of every node, for jobs that allocate across the lab.
pub const ALL: &str = "all";

/// What the Slurm lab needs, or why it cannot run here.
pub fn available() -> Result<(), String> {
    crate::netns::available()?;
    for tool in [
        "slurmctld",
        "slurmd",
        "scontrol",
        "sinfo",
        "munged",
        "mungekey",
        "nsenter",
        "unshare",
    ] {
        crate::host::tool(tool, "run scripts/setup/43-slurm.sh")?;
    }
    Ok(())
}

/// A Slurm cluster on lab hosts; its daemons die with it.
pub struct SlurmLab {
    pub lab: Lab,
    /// The generated slurm.conf (`SLURM_CONF`).
    pub conf: PathBuf,
    _daemons: Vec<KillOnDrop>,
}

impl SlurmLab {
    /// For a test named `name`: its scratch directory and a lab started in it, or `None` when
    /// Slurm or root is missing (the test is skipped; under `HOLDFAST_TEST_STRICT` it fails).
    pub fn for_test(name: &str) -> Option<(crate::Scratch, SlurmLab)> {
        crate::require(available())?;
        let dir = crate::Scratch::new(name);
        let lab = SlurmLab::start(&dir);
        Some((dir, lab))
    }

    /// Starts munge, slurmctld and the slurmds with their state and logs under `dir`; returns
    /// once every node is idle.
    pub fn start(dir: &Path) -> SlurmLab {
        let mut lab = Lab::create().expect("creating the lab");
        let controller = lab.add_host(CONTROLLER).expect("adding the controller");
        let mut hosts = BTreeMap::new();
        for (name, _) in NODES {
            hosts.insert(name, lab.add_host(name).expect("adding a node").addr);
        }
        let spawn = |command: &mut Command, name: &str| crate::spawn_logged(command, dir, name);
        let mut daemons = Vec::new();

        // munge with its own key and socket: nothing of the machine's own is used.
        let key = dir.join("munge.key");
        let ran = crate::run(Command::new("mungekey").arg("-c").arg("-k").arg(&key));
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
        crate::wait_for_blocking(Duration::from_secs(10), || {
            crate::check(socket.exists(), || "munged has no socket yet".into())
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
        let every: Vec<&str> = NODES.iter().map(|(n, _)| *n).collect();
        conf += &format!("PartitionName={ALL} Nodes={} State=UP\n", every.join(","));
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
        crate::wait_for_blocking(Duration::from_secs(60), || {
            let states = slurm.states();
            crate::check(
                NODES
                    .iter()
                    .all(|(n, _)| states.get(*n).map(String::as_str) == Some("idle")),
                || format!("nodes not all idle yet: {states:?}"),
            )
        });
        slurm
    }

    /// A Slurm client command, run on the controller's host.
    pub fn client(&self, program: &str) -> Command {
        let netns = &self.lab.host(CONTROLLER).expect("the controller").netns;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(program)
            .env("SLURM_CONF", &self.conf);
        command
    }

    /// Submits batch script `script` with `args` (`-N 3`, `-p all`, …); returns the Slurm
    /// job id.
    pub fn sbatch(&self, args: &[&str], script: &Path) -> String {
        let ran = crate::run(
            self.client("sbatch")
                .arg("--parsable")
                .args(args)
                .arg(script),
        );
        assert!(ran.ok(), "sbatch: {}", ran.stderr);
        let id = ran.stdout.trim().split(';').next().unwrap_or_default();
        assert!(!id.is_empty(), "sbatch printed no job id: {}", ran.stdout);
        id.to_string()
    }

    /// Slurm job `id`'s `JobState` (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, …) and its
    /// whole `scontrol show job` record.
    pub fn job_state(&self, id: &str) -> (String, String) {
        let ran = crate::run(self.client("scontrol").args(["-o", "show", "job", id]));
        let state = (ran.stdout.split_whitespace())
            .find_map(|field| field.strip_prefix("JobState="))
            .unwrap_or_default()
            .to_string();
        (state, ran.stdout)
    }

    /// Each node's state as `sinfo` shows it (`idle`, `drain`, …; `*` = not responding).
    pub fn states(&self) -> BTreeMap<String, String> {
        self.sinfo_by_node(&["-h", "-N", "-o", "%n %t"], ' ')
    }

    /// `sinfo ARGS` printing one `NODE<sep>VALUE` line per node, as a map.
    fn sinfo_by_node(&self, args: &[&str], sep: char) -> BTreeMap<String, String> {
        let ran = crate::run(self.client("sinfo").args(args));
        ran.stdout
            .lines()
            .filter_map(|l| l.split_once(sep))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect()
    }

    /// A directory of `sinfo` and `scontrol` that run the real commands in the controller's
    /// network namespace with this cluster's slurm.conf: first on the PATH of a process outside
    /// the lab (a coordinator on loopback), its provider scripts talk to this Slurm.
    pub fn client_wrappers(&self, dir: &Path) -> PathBuf {
        let bin = dir.join("slurm-bin");
        let netns = &self.lab.host(CONTROLLER).expect("the controller").netns;
        for program in ["sinfo", "scontrol"] {
            let found =
                crate::run(Command::new("sh").args(["-c", &format!("command -v {program}")]));
            let real = found.stdout.trim();
            assert!(found.ok() && !real.is_empty(), "{program} is not installed");
            crate::write_script(
                &bin,
                program,
                &format!(
                    "SLURM_CONF='{}' exec nsenter --net=/run/netns/{netns} {real} \"$@\"",
                    self.conf.display()
                ),
            );
        }
        bin
    }

    /// `sinfo -R`: the reason of every drained or down node, by node.
    pub fn reasons(&self) -> BTreeMap<String, String> {
        self.sinfo_by_node(&["-R", "-h", "-o", "%N|%E"], '|')
    }

    /// Runs a provider call with the test thread in the controller's network namespace, where
    /// the scripts' Slurm commands reach slurmctld.
    pub fn on_controller<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let _inside = self.lab.enter(CONTROLLER).expect("entering the controller");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(call)
    }
}

/// `holdfast agent` for Slurm node `$1` in a UTS namespace of its own whose host name is the
/// node's (`unshare` execs: the command's pid is the agent's). Shell text taking `$1` = the
/// node, `$2` = the holdfast binary, `$3` = the coordinator, `$4` = the role, `$5` = the
/// directory whose `nodes/` hold the agents' state.
pub const AGENT: &str =
    "unshare --uts sh -c 'hostname \"$1\" && exec \"$2\" agent --coordinator \"$3\" \
     --node-id \"$1\" --role \"$4\" --state-dir \"$5/nodes/$1\"' agent";

/// Starts the agent of Slurm node `node` (see [`AGENT`]), its output in `dir/<node>.log`.
pub fn start_agent(
    exe: &Path,
    coordinator: &str,
    node: &str,
    role: &str,
    dir: &Path,
) -> KillOnDrop {
    crate::spawn_logged(
        Command::new("sh")
            .args(["-c", &format!("exec {AGENT} \"$@\""), "sh", node])
            .arg(exe)
            .arg(coordinator)
            .args([role, &dir.display().to_string()]),
        dir,
        node,
    )
}

impl SlurmLab {
    /// Makes this lab the provider of a coordinator started next from this process: the shipped
    /// slurm scripts in `dir/provider`, `sinfo`/`scontrol` wrappers first on `PATH`, spares from
    /// the `spare` partition whose agents `provision` starts as [`AGENT`]s. Returns the
    /// coordinator's config (for `--config`) and the `PATH` before (to put back).
    pub fn as_provider(&self, dir: &Path, exe: &Path) -> (String, String) {
        let provider = crate::provider_scripts(dir, "slurm");
        let wrappers = self.client_wrappers(dir);
        let path = std::env::var("PATH").unwrap_or_default();
        let start = format!(
            "{AGENT} {{host}} {exe} http://$(cat {dir}/coordinator.addr) spare {dir} \
             >{dir}/{{host}}.log 2>&1 & echo $! > {dir}/{{host}}.pid",
            exe = exe.display(),
            dir = dir.display()
        );
        std::env::set_var("PATH", format!("{}:{path}", wrappers.display()));
        std::env::set_var("HOLDFAST_SLURM_SPARE_PARTITION", "spare");
        std::env::set_var("HOLDFAST_SLURM_START", &start);
        (crate::exec_provider_config(dir, &provider, 20000), path)
    }

    /// Starts a coordinator on loopback with this lab as its provider ([`SlurmLab::as_provider`])
    /// and the agent of node `node` as a worker, and waits for it: the cluster, that agent and
    /// the `PATH` before (to put back).
    pub async fn start_cluster(
        &self,
        exe: &Path,
        dir: &Path,
        node: &str,
    ) -> (holdfast_cli::demo::LocalCluster, KillOnDrop, String) {
        let (config, path) = self.as_provider(dir, exe);
        let cluster = holdfast_cli::demo::LocalCluster::start(exe, dir, &["--config", &config])
            .await
            .expect("the coordinator starts");
        let agent = start_agent(exe, &cluster.addr, node, "worker", dir);
        cluster
            .wait_ready(1, std::time::Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{node}'s agent is not ready: {e}"));
        (cluster, agent, path)
    }
}
