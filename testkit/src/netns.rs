//! Test hosts on one machine: each host is a network namespace with one interface (`eth0`),
//! cabled by a veth pair to a bridge that lives in a namespace of its own (the switch). Nothing
//! is added to the machine's own namespace, and every lab has its own switch, so labs of
//! parallel test runs can all use the same addresses ([`SUBNET`]) without meeting.
//!
//! A [`Lab`] can run a program on a host, kill every process of a host (as when it loses
//! power), cut a host's cable at the switch and plug it back in. Dropping the lab kills what
//! runs in its namespaces and deletes them, also when a test fails; [`Lab::sweep_stale`] removes
//! the labs of processes that were killed before they could clean up.
//!
//! It needs root (`ip netns`), and is shared by the end-to-end tests and `holdfast-e2e`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The /24 every lab's hosts are numbered in (inside the lab's own namespaces only).
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// The name of each host's interface, the same on every host (`GLOO_SOCKET_IFNAME`).
pub const IFNAME: &str = "eth0";
/// Prefix of every namespace a lab creates: `hf-<pid>-<n>-<host>`.
const NS_PREFIX: &str = "hf-";

static NEXT_LAB: AtomicU32 = AtomicU32::new(1);

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct LabHost {
    pub name: String,
    /// The network namespace (`ip netns` name).
    pub netns: String,
    pub addr: Ipv4Addr,
    /// The host's cable end on the switch: cutting it takes the host off the network.
    switch_port: String,
}

/// Hosts on a private network; see the module docs.
#[derive(Debug)]
pub struct Lab {
    id: String,
    switch: String,
    hosts: BTreeMap<String, LabHost>,
    next_octet: u8,
}

/// Runs `ip` with `args`; the error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2 is needed for network namespaces)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may create network namespaces (root with iproute2).
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("network namespaces need root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `ip` (install iproute2): {e}")),
    }
}

impl Lab {
    /// Creates an empty lab: its switch namespace with a bridge.
    pub fn create() -> anyhow::Result<Lab> {
        Lab::sweep_stale();
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{id}-sw");
        ip(&["netns", "add", &switch])?;
        let lab = Lab {
            id,
            switch,
            hosts: BTreeMap::new(),
            next_octet: 1,
        };
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// Adds a host with the next free address and cables it to the switch.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<LabHost> {
        if self.hosts.contains_key(name) {
            bail!("the lab already has a host {name}");
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("host name {name:?}: use letters, digits and '-'");
        }
        if self.next_octet == 255 {
            bail!("the lab's /24 is full");
        }
        let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], self.next_octet);
        self.next_octet += 1;
        let netns = format!("{}-{name}", self.id);
        let switch_port = format!("p{}", addr.octets()[3]);
        ip(&["netns", "add", &netns])?;
        // Registered before the rest so that a failure below still deletes the namespace.
        let host = LabHost {
            name: name.to_string(),
            netns: netns.clone(),
            addr,
            switch_port: switch_port.clone(),
        };
        self.hosts.insert(name.to_string(), host.clone());
        ip(&[
            "link",
            "add",
            IFNAME,
            "netns",
            &netns,
            "type",
            "veth",
            "peer",
            "name",
            &switch_port,
            "netns",
            &self.switch,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &switch_port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            IFNAME,
        ])?;
        ip(&["-n", &netns, "link", "set", IFNAME, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&LabHost> {
        self.hosts
            .get(name)
            .with_context(|| format!("the lab has no host {name}"))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &LabHost> {
        self.hosts.values()
    }

    /// A command that runs `program` on `host` (`ip netns exec`, which execs the program: the
    /// child's pid is the program's).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
        let host = self.host(host)?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.netns]).arg(program);
        Ok(command)
    }

    /// Pids of every process on `host`.
    pub fn pids(&self, host: &str) -> anyhow::Result<Vec<i32>> {
        let netns = &self.host(host)?.netns;
        Ok(ns_pids(netns))
    }

    /// SIGKILLs every process on `host` (agent, launcher, workers), as a power loss would; returns
    /// how many there were. Repeats until none is left, since a dying launcher may fork.
    pub fn kill_processes(&self, host: &str) -> anyhow::Result<usize> {
        let netns = self.host(host)?.netns.clone();
        Ok(kill_all(&netns))
    }

    /// Takes `host` off the network: its cable is unplugged at the switch (its processes keep
    /// running and see no carrier; packets to and from it are lost).
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        let port = &self.host(host)?.switch_port;
        ip(&["-n", &self.switch, "link", "set", port, "down"]).map(drop)
    }

    /// Plugs `host`'s cable back in.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        let port = &self.host(host)?.switch_port;
        ip(&["-n", &self.switch, "link", "set", port, "up"]).map(drop)
    }

    /// Moves the calling thread into `host`'s network namespace until the guard is dropped.
    /// Sockets the thread opens meanwhile (a current-thread runtime's included) are the host's,
    /// and so are the namespaces of threads and processes it starts.
    pub fn enter(&self, host: &str) -> anyhow::Result<NetnsGuard> {
        let netns = &self.host(host)?.netns;
        let original = File::open("/proc/thread-self/ns/net")
            .context("opening this thread's network namespace")?;
        let target = File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening namespace {netns}"))?;
        setns(&target, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering namespace {netns}"))?;
        Ok(NetnsGuard { original })
    }

    /// Deletes the namespaces of labs whose process is gone (killed before its drop ran).
    pub fn sweep_stale() {
        let Ok(list) = ip(&["netns", "list"]) else {
            return;
        };
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            kill_all(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Restores the thread's original network namespace when dropped.
pub struct NetnsGuard {
    original: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            tracing::error!("cannot return to the original network namespace: {e}");
        }
    }
}

fn ns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_all(netns: &str) -> usize {
    let mut killed = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let pids = ns_pids(netns);
        if pids.is_empty() {
            break;
        }
        let me = std::process::id() as i32;
        let pids: Vec<i32> = pids.into_iter().filter(|p| *p != me).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SIGKILL ends stopped processes too.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in self.hosts.values() {
            kill_all(&host.netns);
        }
        for host in self.hosts.values() {
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                tracing::warn!("tear-down: {e}");
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.switch]) {
            tracing::warn!("tear-down: {e}");
        }
    }
}
