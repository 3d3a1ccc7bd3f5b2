//! Host checks: available memory, free space on the checkpoint/scratch paths, configured mounts
//! present and writable, and the agent's own memory. Read from /proc and statvfs; a hung
//! network filesystem blocks only this probe's thread (the monitor reports it Unknown).

use std::path::{Path, PathBuf};

use holdfast_proto::v1 as pb;
use pb::{HealthAction as A, HealthState as S};

use super::check;

const MIB: u64 = 1024 * 1024;

/// What the host probe looks at, from the agent config.
#[derive(Debug, Clone)]
pub struct HostProbe {
    /// Paths that need free space (checkpoints, scratch, the state directory).
    pub disk_paths: Vec<PathBuf>,
    pub min_free_disk_mb: u64,
    /// Mount points that must be mounted and writable.
    pub mounts: Vec<PathBuf>,
    pub min_available_memory_mb: u64,
    /// The agent's resident memory above which it reports itself degraded.
    pub agent_max_rss_mb: u64,
}

impl HostProbe {
    pub fn poll(&self) -> Vec<pb::HealthCheck> {
        let mut out = vec![self.memory(), self.agent()];
        out.extend(self.disk_paths.iter().map(|p| self.disk(p)));
        let mounted = mount_points();
        out.extend(self.mounts.iter().map(|m| mount(m, mounted.as_deref())));
        out
    }

    fn memory(&self) -> pb::HealthCheck {
        match meminfo_kib("MemAvailable") {
            Some(kib) => {
                let mib = kib / 1024;
                if mib < self.min_available_memory_mb {
                    check(
                        "memory",
                        S::Degraded,
                        &format!(
                            "{mib} MiB available, below {} MiB",
                            self.min_available_memory_mb
                        ),
                        A::None,
                    )
                } else {
                    check(
                        "memory",
                        S::Healthy,
                        &format!("{mib} MiB available"),
                        A::None,
                    )
                }
            }
            None => check(
                "memory",
                S::Unknown,
                "cannot read MemAvailable from /proc/meminfo",
                A::None,
            ),
        }
    }

    fn agent(&self) -> pb::HealthCheck {
        match status_kib("VmRSS") {
            Some(kib) if kib / 1024 > self.agent_max_rss_mb => check(
                "agent",
                S::Degraded,
                &format!(
                    "agent resident memory {} MiB above {} MiB",
                    kib / 1024,
                    self.agent_max_rss_mb
                ),
                A::None,
            ),
            Some(kib) => check(
                "agent",
                S::Healthy,
                &format!("resident memory {} MiB", kib / 1024),
                A::None,
            ),
            None => check(
                "agent",
                S::Unknown,
                "cannot read VmRSS from /proc/self/status",
                A::None,
            ),
        }
    }

    fn disk(&self, path: &Path) -> pb::HealthCheck {
        let name = format!("disk:{}", path.display());
        match nix::sys::statvfs::statvfs(path) {
            Ok(s) => {
                let free = s.blocks_available().saturating_mul(s.fragment_size());
                if free < self.min_free_disk_mb * MIB {
                    check(
                        &name,
                        S::Degraded,
                        &format!(
                            "{} MiB free, below {} MiB",
                            free / MIB,
                            self.min_free_disk_mb
                        ),
                        A::None,
                    )
                } else {
                    check(
                        &name,
                        S::Healthy,
                        &format!("{} MiB free", free / MIB),
                        A::None,
                    )
                }
            }
            Err(e) => check(&name, S::Unhealthy, &format!("cannot stat: {e}"), A::None),
        }
    }
}

fn mount(path: &Path, mounted: Option<&[PathBuf]>) -> pb::HealthCheck {
    let name = format!("mount:{}", path.display());
    let Some(mounted) = mounted else {
        return check(
            &name,
            S::Unknown,
            "cannot read /proc/self/mountinfo",
            A::None,
        );
    };
    if !mounted.iter().any(|m| m == path) {
        return check(&name, S::Unhealthy, "not mounted", A::None);
    }
    let probe = path.join(format!(".holdfast-write-probe-{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe));
    match written {
        Ok(()) => check(&name, S::Healthy, "mounted and writable", A::None),
        Err(e) => check(&name, S::Unhealthy, &format!("not writable: {e}"), A::None),
    }
}

/// Mount points from /proc/self/mountinfo (field 5, with the kernel's octal escapes undone).
fn mount_points() -> Option<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| {
                PathBuf::from(
                    m.replace("\\040", " ")
                        .replace("\\011", "\t")
                        .replace("\\134", "\\"),
                )
            })
            .collect(),
    )
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn meminfo_kib(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

fn status_kib(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(checks: &[pb::HealthCheck], name: &str) -> pb::HealthCheck {
        checks
            .iter()
            .find(|c| c.check == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    }

    #[test]
    fn reports_memory_disk_mounts_and_itself() {
        let dir = std::env::temp_dir();
        let probe = HostProbe {
            disk_paths: vec![dir.clone(), PathBuf::from("/no/such/path")],
            min_free_disk_mb: 1,
            mounts: vec![PathBuf::from("/"), dir.join("holdfast-not-a-mount")],
            min_available_memory_mb: 1,
            agent_max_rss_mb: 1 << 20,
        };
        let checks = probe.poll();
        assert_eq!(by_name(&checks, "memory").state, S::Healthy as i32);
        assert_eq!(by_name(&checks, "agent").state, S::Healthy as i32);
        assert_eq!(
            by_name(&checks, &format!("disk:{}", dir.display())).state,
            S::Healthy as i32
        );
        assert_eq!(
            by_name(&checks, "disk:/no/such/path").state,
            S::Unhealthy as i32
        );
        let not_mounted = by_name(
            &checks,
            &format!("mount:{}", dir.join("holdfast-not-a-mount").display()),
        );
        assert_eq!(
            (not_mounted.state, not_mounted.reason.as_str()),
            (S::Unhealthy as i32, "not mounted")
        );
        assert!(by_name(&checks, "mount:/").state != S::Unknown as i32);
    }

    #[test]
    fn thresholds_degrade() {
        let probe = HostProbe {
            disk_paths: vec![std::env::temp_dir()],
            min_free_disk_mb: u64::MAX / MIB,
            mounts: vec![],
            min_available_memory_mb: u64::MAX,
            agent_max_rss_mb: 0,
        };
        let checks = probe.poll();
        assert!(
            checks.iter().all(|c| c.state == S::Degraded as i32),
            "{checks:?}"
        );
    }

    #[test]
    fn parses_kib_fields() {
        assert_eq!(
            kib_field("MemTotal:  100 kB\nMemAvailable:   42 kB\n", "MemAvailable"),
            Some(42)
        );
        assert_eq!(kib_field("MemTotal:  100 kB\n", "MemAvailable"), None);
    }
}
