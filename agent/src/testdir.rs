//! Test support: a fresh directory for one test (the agent's unit tests, and every test rig
//! through `holdfast-testkit`). Built for tests only, or with the `test-support` feature.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A fresh, empty directory for one test: `<tmp>/holdfast-<name>-<pid>`. Dropping it removes it
/// — unless the test is failing: then its logs and state stay for a look, and it says where. Declare it
/// before the cluster that writes into it: locals drop in reverse order, the cluster first.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// `name` must be unique among the tests of one test binary (they run in one process).
    pub fn new(name: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), name)
    }

    /// Like [`Scratch::new`], in memory: under `/dev/shm` (a tmpfs) where the machine has it,
    /// else in the temp directory. For tests that write many small files: a loaded disk
    /// creates and removes them at a few hundred a second.
    pub fn in_memory(name: &str) -> Scratch {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Scratch::new_in(&parent, name)
    }

    fn new_in(parent: &Path, name: &str) -> Scratch {
        let dir = parent.join(format!("holdfast-{name}-{}", std::process::id()));
        // Left over by an earlier run killed before it could clean up.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a look: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
