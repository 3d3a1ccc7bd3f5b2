//! Restarting the agent in place: the process re-executes its own binary with its own
//! arguments, keeping its pid. An upgraded binary installed at the same path takes over; the
//! workers (their own process groups) are untouched and the new agent adopts them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::LazyLock;

/// When this agent process started, unix ms (reported in hello: a new value means a restart).
pub static STARTED_MS: LazyLock<i64> = LazyLock::new(holdfast_core::now_ms);

/// Replaces this process with a fresh run of its binary. Returns only on failure, with why.
pub fn exec_self() -> String {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return format!("cannot find the agent's binary: {e}"),
    };
    // An upgrade replaced the file: /proc/self/exe names the old one "(deleted)"; the path
    // now holds the new binary, which is the point.
    let path = exe.as_os_str().as_bytes();
    let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
    let Ok(program) = CString::new(path) else {
        return "the agent's path holds a NUL byte".into();
    };
    let args: Result<Vec<CString>, _> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    let Ok(args) = args else {
        return "an argument holds a NUL byte".into();
    };
    match nix::unistd::execv(&program, &args) {
        Ok(never) => match never {},
        Err(e) => format!("execv {}: {e}", program.to_string_lossy()),
    }
}
