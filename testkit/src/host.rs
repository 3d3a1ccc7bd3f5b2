//! What this machine offers a test: the tools it needs, free ports. A test that lacks a tool
//! is skipped, except under `HOLDFAST_TEST_STRICT=1` (`scripts/test.sh`), where it fails: a
//! full run must not pass by skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether missing tools fail tests instead of skipping them.
pub fn strict() -> bool {
    std::env::var_os("HOLDFAST_TEST_STRICT").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `found`, or `None` after printing `skipped: <why>` — a failure under [`strict`].
pub fn require<T>(found: Result<T, String>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(why) if strict() => panic!("cannot run: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Skips the rest of a test for `why` (a failure under [`strict`]).
pub fn skip(why: &str) {
    require::<()>(Err(why.to_string()));
}

/// Whether `program --version` runs and succeeds.
pub fn runs(program: impl AsRef<std::ffi::OsStr>) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `tool` if it is on PATH (see [`require`]); `hint` says how to get it.
pub fn tool(tool: &str, hint: &str) -> Result<String, String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(tool.to_string())
    } else {
        Err(format!("{tool} is not installed ({hint})"))
    }
}

/// The Python the training scripts run with (python3, or python); see [`require`].
pub fn python() -> Option<String> {
    require(
        ["python3", "python"]
            .into_iter()
            .find(|p| runs(p))
            .map(String::from)
            .ok_or_else(|| "no python3 for the training script".to_string()),
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Headless Chromium driven by playwright-core through node, for the dashboard's tests
/// (`scripts/setup/70-browser.sh` installs them and exports `HOLDFAST_CHROMIUM` and
/// `HOLDFAST_NODE_MODULES`).
#[derive(Debug, Clone)]
pub struct Browser {
    pub chromium: String,
    pub node_modules: PathBuf,
}

impl Browser {
    /// The browser, or what is missing (see [`require`]).
    pub fn find() -> Result<Browser, String> {
        let chromium =
            std::env::var("HOLDFAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let node_modules = std::env::var("HOLDFAST_NODE_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|_| crate::repo_root().join("target/test-cache/browser/node_modules"));
        if !Path::new(&chromium).exists() {
            return Err(format!(
                "no chromium at {chromium} (run scripts/setup/70-browser.sh)"
            ));
        }
        if !node_modules.join("playwright-core").exists() {
            return Err(format!(
                "no playwright-core in {} (run scripts/setup/70-browser.sh)",
                node_modules.display()
            ));
        }
        if !runs("node") {
            return Err("no node (run scripts/setup/70-browser.sh)".into());
        }
        Ok(Browser {
            chromium,
            node_modules,
        })
    }

    /// `node <script>` with the browser and playwright-core made known to it.
    pub fn node(&self, script: &Path) -> Command {
        let mut command = Command::new("node");
        command
            .arg(script)
            .env("NODE_PATH", &self.node_modules)
            .env("HOLDFAST_CHROMIUM", &self.chromium);
        command
    }

    /// Starts the dashboard test script `cli/tests/<script>` on the dashboard at `url`, saving
    /// its screenshot to `screenshot`, with `env` besides: the running script (killed when
    /// dropped), its stdin and its stdout's lines (see [`script_line`]).
    pub fn open_dashboard(
        &self,
        script: &str,
        url: &str,
        screenshot: &Path,
        env: &[(&str, String)],
    ) -> (
        tokio::process::Child,
        tokio::process::ChildStdin,
        ScriptLines,
    ) {
        use tokio::io::AsyncBufReadExt;
        let script = crate::repo_root().join("cli/tests").join(script);
        let mut command = self.node(&script);
        command
            .env("DASHBOARD_URL", url)
            .env("DASHBOARD_SCREENSHOT", screenshot)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("the script's stdin");
        let stdout = child.stdout.take().expect("the script's stdout");
        (child, stdin, tokio::io::BufReader::new(stdout).lines())
    }
}

/// A browser script's stdout, read a line at a time: the dashboard tests' scripts print one
/// JSON object a line.
pub type ScriptLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// The next line of a browser script as JSON, within `within`. Fails the test when the script
/// ends, says something that is not JSON, or reports `{"stage":"error"}`.
pub async fn script_line(
    lines: &mut ScriptLines,
    within: std::time::Duration,
) -> serde_json::Value {
    let line = tokio::time::timeout(within, lines.next_line())
        .await
        .expect("browser script answered in time")
        .expect("read browser script output")
        .expect("browser script ended early");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
    assert_ne!(
        v["stage"], "error",
        "browser script failed: {}",
        v["message"]
    );
    v
}

/// libfaketime's preload library (Debian `faketime`; `scripts/setup/30-faketime.sh` installs
/// it and exports `HOLDFAST_LIBFAKETIME`), to run one process with a shifted wall clock; see
/// [`require`].
pub fn libfaketime() -> Result<String, String> {
    let configured = std::env::var("HOLDFAST_LIBFAKETIME").unwrap_or_default();
    let found = [
        configured.as_str(),
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| !p.is_empty() && Path::new(p).exists())
    .map(String::from);
    found.ok_or_else(|| "libfaketime is not installed (apt-get install faketime)".into())
}
