//! An empty directory for one test, removed when the test ends (passed or failed).

use std::path::{Path, PathBuf};

/// `<tmp>/holdfast-NAME-PID`: `name` must be unique among the crate's tests, which run in
/// parallel in one process.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("holdfast-{name}-{}", std::process::id()));
        // Left over by an earlier run killed before it could clean up.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
