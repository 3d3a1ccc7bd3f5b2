//! Files the agent must find whole after a crash or a power loss (`fencing.json`,
//! `worker.json`): each is written beside its place, synced, renamed over it, and its directory
//! synced, so a reader sees the old content or the new one, never a torn mix, and a completed
//! write is not lost.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path)?;
    let written = write_synced(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // Whatever was written half is of no use; the next write starts over.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the directory that holds the name is.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Where `path`'s next content is written first: beside it (a rename does not cross file
/// systems), named after it.
fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?
        .to_os_string();
    name.push(".tmp");
    Ok(path.with_file_name(name))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_whole_and_leaves_no_temp_file() {
        let dir = crate::testdir::Scratch::new("durable");
        let path = dir.join("state.json");
        write(&path, b"first, and longer").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        assert!(
            write(Path::new("/"), b"x").is_err(),
            "a path without a file name"
        );
    }
}
