//! Processes of a test: the `holdfast` binary under test, commands run to their end, children
//! killed with the test, raw HTTP to a coordinator's port.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// The `holdfast` binary cargo built for this integration test, as a `&'static Path`. A macro
/// because `CARGO_BIN_EXE_holdfast` exists only while the `holdfast` package's own tests
/// compile.
#[macro_export]
macro_rules! holdfast_exe {
    () => {
        ::std::path::Path::new(env!("CARGO_BIN_EXE_holdfast"))
    };
}

/// What a finished command did.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn from(out: std::process::Output) -> Ran {
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `command` to its end, collecting its output.
pub fn run(command: &mut Command) -> Ran {
    Ran::from(
        command
            .output()
            .unwrap_or_else(|e| panic!("running {command:?}: {e}")),
    )
}

/// [`run`] without blocking the runtime.
pub async fn run_async(command: &mut tokio::process::Command) -> Ran {
    Ran::from(
        command
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {command:?}: {e}")),
    )
}

/// What a benchmark prints over its runs' seconds: `median M min A max B runs N`.
pub fn timing_summary(times: &mut [f64]) -> String {
    assert!(!times.is_empty(), "no runs were timed");
    times.sort_by(f64::total_cmp);
    format!(
        "median {:.3} min {:.3} max {:.3} runs {}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    )
}

/// A child process killed and reaped when the test is done with it, failed or not.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Asks the process to stop (SIGINT, as Ctrl-C would) and waits up to `within` for it to
    /// exit: for servers that write their state out on the way.
    pub fn interrupt(&mut self, within: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("sending SIGINT");
        crate::wait_for_blocking(within, || match self.0.try_wait() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("process {pid} still running after SIGINT")),
            Err(e) => Err(format!("waiting for process {pid}: {e}")),
        });
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends one raw HTTP/1.1 request (`{host}` in it is replaced by the address's host:port) and
/// `body` over loopback; returns the whole response as text.
pub fn http(addr: &str, request: &str, body: &[u8]) -> String {
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    s.write_all(request.replace("{host}", host).as_bytes())
        .expect("sending the request");
    s.write_all(body).expect("sending the body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("reading the response");
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain GET of `path`; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let text = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n"),
        &[],
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Starts `command` with its stdout and stderr in `dir/<name>.log`; killed when dropped.
pub fn spawn_logged(command: &mut Command, dir: &std::path::Path, name: &str) -> KillOnDrop {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log file");
    KillOnDrop(
        command
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}")),
    )
}
