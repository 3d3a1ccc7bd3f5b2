//! Files a daemon must find whole after a crash or a power loss (the agent's `fencing.json` and
//! `worker.json`, the coordinator's cluster CA and tokens, a joined agent's node key): each is
//! written beside its place, synced, renamed over it, and its directory synced, so a reader sees
//! the old content or the new one, never a torn mix, and a completed write is not lost.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o644)
}

/// [`write`] for a secret (a key, a token): the file is created with mode 0600, so it is never
/// readable by others, not even for a moment.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_path(path)?;
    let written = write_synced(&tmp, bytes, mode)
        .inspect(|()| hang_before_rename(path))
        .and_then(|()| std::fs::rename(&tmp, path));
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

/// The test seam of feature `test-seams` (off in every daemon build): when
/// `HOLDFAST_TEST_HANG_BEFORE_RENAME` names `path`, the write waits here, its temp file synced
/// and not yet renamed, until the process is killed.
#[cfg(feature = "test-seams")]
fn hang_before_rename(path: &Path) {
    if std::env::var_os("HOLDFAST_TEST_HANG_BEFORE_RENAME").is_some_and(|p| p == path.as_os_str()) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

#[cfg(not(feature = "test-seams"))]
fn hang_before_rename(_: &Path) {}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    // A leftover temporary file of a crash may have another mode: start it over.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_content_whole_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("holdfast-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        // What a crash between the write and the rename leaves behind does not get in the way.
        std::fs::write(dir.join("state.json.tmp"), b"torn").unwrap();
        write(&path, b"first, and longer").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        let secret = dir.join("node.key");
        write_private(&secret, b"key").unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            write(Path::new("/"), b"x").is_err(),
            "a path without a file name"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
