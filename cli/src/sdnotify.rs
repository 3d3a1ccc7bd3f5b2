//! systemd's notify protocol (`Type=notify` units): `READY=1` once serving, `STOPPING=1` on
//! shutdown, `WATCHDOG=1` every half `WatchdogSec`. One datagram per message to the unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without the
//! variable (not run by systemd) every call is a no-op.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`); `Ok(false)` when not run under a notify-aware manager.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &target)?;
    }
    Ok(true)
}

/// Logs instead of failing: a lost notification must not take the service down.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

/// Half the watchdog period systemd asked for, if it asked this process
/// (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog from the runtime for as long as it runs: a wedged runtime stops the
/// pings and systemd restarts the service.
pub fn spawn_watchdog() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            notify_or_log("WATCHDOG=1");
        }
    });
}
