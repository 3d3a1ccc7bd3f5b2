//! The fault-injection backend: a test double that wraps the real GPU backend and adds faults
//! written to a file, so tests and `holdfast demo --fault xid` exercise the same path a real
//! NVML or kernel-log event takes. It exists only when the agent config says
//! `fault_injection = true` (or `--enable-fault-injection`); otherwise the file is never read.
//!
//! Interface: each line appended to `<state_dir>/inject` is one fault —
//! `xid <code> [gpu <index>]`, `ecc-dbe [gpu <index>]` or `gpu-lost [gpu <index>]`; and
//! `hang-probe <seconds>` makes the next GPU poll hang that long, like a wedged driver. The agent
//! follows the file every [`POLL_INTERVAL`] and acts on each complete (newline-terminated) line
//! once; a line still being written waits for the next look. The file is never moved or
//! truncated by the agent: taking it away could lose a line whose writer had already opened it.
//! Lines already in the file when the agent starts are not acted on again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::v1 as pb;

use super::{EventKind, EventSource, GpuBackend, GpuEvent};

/// How often the inject file is looked at: short, so an injected fault reaches the coordinator
/// well within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The file name under the state directory.
pub const INJECT_FILE: &str = "inject";

/// Wraps a real backend and adds the faults written to the inject file.
pub struct FaultInjection {
    inner: Box<dyn GpuBackend>,
    file: PathBuf,
    /// A hang asked for by the inject file, taken by the next poll.
    hang: Arc<Mutex<Option<Duration>>>,
}

impl FaultInjection {
    pub fn new(inner: Box<dyn GpuBackend>, state_dir: &Path) -> Self {
        FaultInjection {
            inner,
            file: state_dir.join(INJECT_FILE),
            hang: Arc::default(),
        }
    }
}

impl GpuBackend for FaultInjection {
    fn inventory(&mut self) -> Vec<pb::Gpu> {
        self.inner.inventory()
    }

    fn poll(&mut self) -> Vec<pb::HealthCheck> {
        let hang = self.hang.lock().ok().and_then(|mut h| h.take());
        if let Some(d) = hang {
            std::thread::sleep(d);
        }
        self.inner.poll()
    }

    fn event_sources(&mut self) -> Vec<Box<dyn EventSource>> {
        let mut sources = self.inner.event_sources();
        sources.push(Box::new(InjectFile {
            file: self.file.clone(),
            hang: self.hang.clone(),
            offset: None,
        }));
        sources
    }

    fn expect(&mut self, gpus: u32) {
        self.inner.expect(gpus);
    }

    fn watches_row_remap(&self) -> bool {
        self.inner.watches_row_remap()
    }
}

/// The inject file as an event source.
struct InjectFile {
    file: PathBuf,
    hang: Arc<Mutex<Option<Duration>>>,
    /// Bytes of the file already acted on; `None` until the first look, which skips what a
    /// previous run of the agent left there.
    offset: Option<u64>,
}

impl EventSource for InjectFile {
    fn name(&self) -> &'static str {
        "injected"
    }

    fn wait(&mut self) -> Result<Vec<GpuEvent>, String> {
        let lines = match self.take_new_lines() {
            Ok(lines) => lines,
            Err(e) => return Err(format!("reading {}: {e}", self.file.display())),
        };
        if lines.is_empty() {
            std::thread::sleep(POLL_INTERVAL);
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            match parse_fault(line) {
                Ok(Injected::Event(event)) => events.push(event),
                Ok(Injected::HangProbe(d)) => {
                    if let Ok(mut hang) = self.hang.lock() {
                        *hang = Some(d);
                    }
                }
                Err(why) => tracing::warn!("{}: ignored {line:?}: {why}", self.file.display()),
            }
        }
        Ok(events)
    }
}

impl InjectFile {
    /// The complete lines appended since the last look.
    fn take_new_lines(&mut self) -> std::io::Result<Vec<String>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match std::fs::File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A file made later is read from its start.
                self.offset.get_or_insert(0);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let offset = match self.offset {
            None => {
                self.offset = Some(len);
                return Ok(Vec::new());
            }
            // Replaced or truncated by someone: start over.
            Some(o) if o > len => 0,
            Some(o) => o,
        };
        if offset == len {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.take(len - offset).read_to_end(&mut bytes)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset = Some(offset + complete as u64);
        Ok(String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// One line of the inject file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    Event(GpuEvent),
    /// The next GPU poll hangs this long.
    HangProbe(Duration),
}

/// Parses one line of the inject file.
pub fn parse_fault(line: &str) -> Result<Injected, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (kind, rest) = match words.as_slice() {
        ["hang-probe", secs] => {
            let secs: f64 = secs.parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
            if !(0.0..=3600.0).contains(&secs) {
                return Err(format!("{secs} s is outside 0..3600"));
            }
            return Ok(Injected::HangProbe(Duration::from_secs_f64(secs)));
        }
        ["xid", code, rest @ ..] => {
            let code = code.parse().map_err(|_| format!("{code:?} is not an XID number"))?;
            (EventKind::Xid(code), rest)
        }
        ["ecc-dbe", rest @ ..] => (EventKind::EccDbe, rest),
        ["gpu-lost", rest @ ..] => (EventKind::GpuLost, rest),
        _ => return Err("expected `xid <code>`, `ecc-dbe` or `gpu-lost` (optionally followed by `gpu <index>`), or `hang-probe <seconds>`".into()),
    };
    let gpu = match rest {
        [] => None,
        ["gpu", index] => Some(
            index
                .parse()
                .map_err(|_| format!("{index:?} is not a GPU index"))?,
        ),
        _ => {
            return Err(format!(
                "unexpected {:?} (only `gpu <index>` may follow)",
                rest.join(" ")
            ))
        }
    };
    Ok(Injected::Event(GpuEvent {
        gpu,
        pci: None,
        kind,
        source: "injected",
        detail: "injected fault".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> GpuEvent {
        match parse_fault(line) {
            Ok(Injected::Event(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn parses_every_fault() {
        let e = event("xid 79 gpu 3");
        assert_eq!(
            (e.kind, e.gpu, e.source),
            (EventKind::Xid(79), Some(3), "injected")
        );
        assert_eq!(event("ecc-dbe").kind, EventKind::EccDbe);
        assert_eq!(event("gpu-lost gpu 0").gpu, Some(0));
        assert_eq!(
            parse_fault("hang-probe 1.5"),
            Ok(Injected::HangProbe(Duration::from_millis(1500)))
        );
        for bad in [
            "xid",
            "xid seventy",
            "xid 79 gpu",
            "xid 79 gpu x",
            "reboot",
            "ecc-dbe 3",
            "hang-probe -1",
            "hang-probe",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_lines_are_consumed_once() {
        let dir = std::env::temp_dir().join(format!("holdfast-inject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(INJECT_FILE);
        let _ = std::fs::remove_file(&path);
        let mut source = InjectFile {
            file: path.clone(),
            hang: Arc::default(),
            offset: None,
        };
        assert!(source.wait().unwrap().is_empty());
        // The writer opens the file before it writes: a look in between sees nothing yet and
        // loses nothing.
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert!(source.wait().unwrap().is_empty());
        use std::io::Write;
        writer
            .write_all(b"xid 79 gpu 1\nnonsense\necc-dbe\nhang-probe 2\nxid 4")
            .unwrap();
        let events = source.wait().unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Xid(79), EventKind::EccDbe]
        );
        assert_eq!(*source.hang.lock().unwrap(), Some(Duration::from_secs(2)));
        assert!(
            source.wait().unwrap().is_empty(),
            "consumed; the partial line waits"
        );
        writer.write_all(b"8\n").unwrap();
        let events = source.wait().unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Xid(48)]
        );
        // A new agent does not act on what an earlier one already read.
        let mut restarted = InjectFile {
            file: path.clone(),
            hang: Arc::default(),
            offset: None,
        };
        assert!(restarted.wait().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
