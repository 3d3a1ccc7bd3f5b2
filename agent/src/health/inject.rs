//! The fault-injection backend: a test double that wraps the real GPU backend and adds faults
//! written to a file, so tests and `holdfast demo --fault xid` exercise the same path a real
//! NVML or kernel-log event takes. It exists only when the agent config says
//! `fault_injection = true` (or `--enable-fault-injection`); otherwise the file is never read.
//!
//! Interface: each line appended to `<state_dir>/inject` is one fault —
//! `xid <code> [gpu <index>]`, `ecc-dbe [gpu <index>]` or `gpu-lost [gpu <index>]`; and
//! `hang-probe <seconds>` makes the next GPU poll hang that long, like a wedged driver. The agent
//! takes the file (renames it, so lines appended meanwhile land in a fresh one), reads it and
//! deletes it, every [`POLL_INTERVAL`].

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
}

impl EventSource for InjectFile {
    fn name(&self) -> &'static str {
        "injected"
    }

    fn wait(&mut self) -> Result<Vec<GpuEvent>, String> {
        let taken = self.file.with_extension("taken");
        match std::fs::rename(&self.file, &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(POLL_INTERVAL);
                return Ok(Vec::new());
            }
            Err(e) => return Err(format!("taking {}: {e}", self.file.display())),
        }
        let text = std::fs::read_to_string(&taken)
            .map_err(|e| format!("reading {}: {e}", taken.display()))?;
        let _ = std::fs::remove_file(&taken);
        let mut events = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
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
        let mut source = InjectFile {
            file: dir.join(INJECT_FILE),
            hang: Arc::default(),
        };
        assert!(source.wait().unwrap().is_empty());
        std::fs::write(
            dir.join(INJECT_FILE),
            "xid 79 gpu 1\nnonsense\necc-dbe\nhang-probe 2\n",
        )
        .unwrap();
        let events = source.wait().unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Xid(79), EventKind::EccDbe]
        );
        assert!(!dir.join(INJECT_FILE).exists());
        assert_eq!(*source.hang.lock().unwrap(), Some(Duration::from_secs(2)));
        assert!(source.wait().unwrap().is_empty(), "consumed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
