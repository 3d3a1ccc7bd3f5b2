//! XIDs from the kernel log: `/dev/kmsg` read from the start of the ring buffer, keeping only
//! records younger than a look-back bound, so an XID logged shortly before the agent (re)started
//! is still seen, and XIDs are seen on hosts where NVML events are not delivered.
//!
//! A `/dev/kmsg` record is `PRIORITY,SEQ,MICROS_SINCE_BOOT,FLAGS;MESSAGE`, one per read, followed
//! by continuation lines starting with a space. `dmesg` output (`[  12.345678] MESSAGE`) parses
//! too, without a timestamp, so captured logs can be replayed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{EventKind, EventSource, GpuEvent};

/// One `NVRM: Xid` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgXid {
    /// Microseconds since boot, when the line came from /dev/kmsg.
    pub micros_since_boot: Option<u64>,
    /// The GPU's PCI address as the driver prints it, e.g. `0000:3b:00`.
    pub pci: String,
    pub code: u32,
    /// The rest of the driver's message.
    pub detail: String,
}

/// Parses one kernel log line; None unless it is an `NVRM: Xid` line.
pub fn parse_line(line: &str) -> Option<KmsgXid> {
    let line = line.trim_end();
    if line.starts_with(' ') {
        return None; // a continuation (key=value) line of the previous record
    }
    let micros_since_boot = line
        .split_once(';')
        .and_then(|(prefix, _)| prefix.split(',').nth(2))
        .and_then(|t| t.parse::<u64>().ok());
    let at = line.find("NVRM: Xid (")?;
    let rest = &line[at + "NVRM: Xid (".len()..];
    let (pci, rest) = rest.split_once("):")?;
    let pci = pci.strip_prefix("PCI:").unwrap_or(pci).to_string();
    let rest = rest.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let code = digits.parse().ok()?;
    let detail = rest[digits.len()..]
        .trim_start_matches([',', ' '])
        .to_string();
    Some(KmsgXid {
        micros_since_boot,
        pci,
        code,
        detail,
    })
}

/// Seconds since boot, from /proc/uptime (the clock /dev/kmsg timestamps count in).
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How often a regular file is checked for appended lines (/dev/kmsg itself blocks in read).
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Reads the kernel log for XIDs: an [`EventSource`] whose `wait` blocks in `read` on
/// /dev/kmsg (a regular file is followed like `tail -f`, for tests and replays).
pub struct KmsgSource {
    path: PathBuf,
    reader: Option<BufReader<std::fs::File>>,
    /// Records older than this many microseconds since boot are history, not news.
    oldest_micros: u64,
}

impl KmsgSource {
    /// Opens `path`; records logged more than `lookback` before now are skipped.
    pub fn open(path: &Path, lookback: Duration) -> std::io::Result<KmsgSource> {
        let file = std::fs::File::open(path)?;
        let now_micros = uptime().map_or(0, |s| (s * 1e6) as u64);
        Ok(KmsgSource {
            path: path.to_path_buf(),
            reader: Some(BufReader::with_capacity(16 * 1024, file)),
            oldest_micros: now_micros.saturating_sub(lookback.as_micros() as u64),
        })
    }
}

impl EventSource for KmsgSource {
    fn name(&self) -> &'static str {
        "kmsg"
    }

    fn wait(&mut self) -> Result<Vec<GpuEvent>, String> {
        let Some(reader) = self.reader.as_mut() else {
            return Err(format!("{} is closed", self.path.display()));
        };
        let mut events = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                // End of a regular file: wait for more to be appended.
                Ok(0) => {
                    if events.is_empty() {
                        std::thread::sleep(FOLLOW_INTERVAL);
                    }
                    return Ok(events);
                }
                Ok(_) => {
                    if let Some(x) = parse_line(&line) {
                        if x.micros_since_boot.is_none_or(|t| t >= self.oldest_micros) {
                            events.push(GpuEvent {
                                gpu: None,
                                pci: Some(x.pci),
                                kind: EventKind::Xid(x.code),
                                source: "kmsg",
                                detail: x.detail,
                            });
                        }
                    }
                    // /dev/kmsg returns one record per read: hand over what we have as soon
                    // as no more is buffered, rather than blocking with events in hand.
                    if !events.is_empty() && reader.buffer().is_empty() {
                        return Ok(events);
                    }
                }
                // Records were overwritten before we read them: the next read goes on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(e) => {
                    self.reader = None;
                    return Err(format!("reading {}: {e}", self.path.display()));
                }
            }
        }
    }
}

/// Reads everything `input` holds and returns its XIDs (for replaying captured logs).
pub fn parse_all(input: impl Read) -> Vec<KmsgXid> {
    BufReader::new(input)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| parse_line(&l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::fs::File {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn parses_captured_kmsg_records() {
        let xids = parse_all(testdata("kmsg-xid.txt"));
        let codes: Vec<u32> = xids.iter().map(|x| x.code).collect();
        assert_eq!(codes, vec![79, 48, 13, 13, 119, 31, 94, 74, 43]);
        assert_eq!(xids[0].pci, "0000:3b:00");
        assert_eq!(xids[0].micros_since_boot, Some(2_401_987_654));
        assert!(
            xids[0].detail.contains("GPU has fallen off the bus"),
            "{}",
            xids[0].detail
        );
        assert_eq!(xids[1].pci, "0000:b1:00");
        assert!(xids[1].detail.starts_with("pid="), "{}", xids[1].detail);
    }

    #[test]
    fn parses_dmesg_output_and_old_address_format() {
        let xids = parse_all(testdata("dmesg-xid.txt"));
        let got: Vec<(u32, &str, Option<u64>)> = xids
            .iter()
            .map(|x| (x.code, x.pci.as_str(), x.micros_since_boot))
            .collect();
        assert_eq!(
            got,
            vec![
                (79, "0000:07:00", None),
                (45, "0000:07:00", None),
                (64, "0000:86:00", None)
            ]
        );
    }

    #[test]
    fn ignores_other_lines() {
        for line in [
            "6,1234,5678,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
            " SUBSYSTEM=pci",
            "4,99,100,-;NVRM: Xid (PCI:0000:3b:00): notanumber",
            "",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn source_skips_records_older_than_the_lookback() {
        let dir = std::env::temp_dir().join(format!("holdfast-kmsg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kmsg");
        // Timestamp 1 µs after boot is older than any look-back on a host up for > 1 s.
        std::fs::write(
            &path,
            "4,1,1,-;NVRM: Xid (PCI:0000:3b:00): 48, pid=1, old\n4,2,999999999999,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.\n",
        )
        .unwrap();
        let mut source = KmsgSource::open(&path, Duration::from_millis(500)).unwrap();
        let events = source.wait().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].kind, events[0].source),
            (EventKind::Xid(79), "kmsg")
        );
        assert!(source.wait().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
