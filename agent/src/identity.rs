//! Who this host is: its hostname and the id of the current boot.

/// The host's name, or "localhost" when it cannot be read.
pub fn hostname() -> String {
    sysinfo::System::host_name()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Changes on every reboot; empty where the kernel does not expose it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
