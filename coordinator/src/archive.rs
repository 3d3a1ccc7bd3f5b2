//! The export of what retention forgets (`holdfast_core::cluster`'s retention): finished jobs
//! and closed incidents, appended to `archive_file` as one JSON line each,
//! `{"kind":"job"|"incident","archived_at":MS,"record":{…}}`, and fsynced before the core
//! forgets them. The file is created 0600 (job records hold their environment). A crash between
//! the append and the state save exports a record again at the next start: the later line of
//! the same id wins.

use std::io::Write;
use std::path::Path;

use holdfast_core::incident::Incident;
use holdfast_core::job::Job;
use serde::Serialize;

#[derive(Serialize)]
struct Line<'a, T> {
    kind: &'static str,
    archived_at: i64,
    record: &'a T,
}

/// The archive lines of `jobs` and `incidents`, each ending in a newline.
pub fn lines(jobs: &[Job], incidents: &[Incident], now: i64) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    let mut push = |kind, record: serde_json::Value| -> Result<(), serde_json::Error> {
        let line = Line {
            kind,
            archived_at: now,
            record: &record,
        };
        out.push_str(&serde_json::to_string(&line)?);
        out.push('\n');
        Ok(())
    };
    for job in jobs {
        push("job", serde_json::to_value(job)?)?;
    }
    for incident in incidents {
        push("incident", serde_json::to_value(incident)?)?;
    }
    Ok(out)
}

/// Appends `text` to `path` (created 0600) and fsyncs it; a new file's directory is fsynced
/// too, so the file itself survives a power cut.
pub fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let new = !path.exists();
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if new {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Exports `jobs` and `incidents`: to `path`, or, with none (a coordinator without a state
/// file), to the log.
pub fn export(path: &Path, jobs: &[Job], incidents: &[Incident], now: i64) -> Result<(), String> {
    let text = lines(jobs, incidents, now).map_err(|e| format!("encoding the archive: {e}"))?;
    if path.as_os_str().is_empty() {
        for line in text.lines() {
            tracing::info!(target: "holdfast::archive", "{line}");
        }
        return Ok(());
    }
    append(path, &text).map_err(|e| format!("appending to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_is_one_line_appended_to_a_private_file() {
        let name = format!("holdfast-archive-{}.jsonl", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let incident = Incident::open(
            7,
            "job",
            "a",
            "worker_exited",
            "exit 1",
            holdfast_core::incident::RecoveryAction::None,
            holdfast_core::Generation(1),
            None,
            5,
        );
        export(&path, &[], std::slice::from_ref(&incident), 9).unwrap();
        export(&path, &[], &[incident], 10).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["kind"], "incident");
        assert_eq!(lines[1]["archived_at"], 10);
        assert_eq!(lines[1]["record"]["id"], 7);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_failed_append_names_the_file() {
        let err = export(Path::new("/nonexistent-dir/archive.jsonl"), &[], &[], 1).unwrap_err();
        assert!(err.contains("/nonexistent-dir/archive.jsonl"), "{err}");
    }
}
