//! Files of a test: its scratch directory, the repository it runs from, executable scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The per-test scratch directory, shared with the agent's unit tests.
pub use holdfast_agent::testdir::Scratch;

/// The repository's root (the parent of `testkit/`).
pub fn repo_root() -> &'static Path {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit.parent().unwrap_or(testkit)
}

/// Writes `text` to `dir/name` (a config file, a token file); returns its path as a flag
/// value.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.display().to_string()
}

/// Writes an executable `#!/bin/sh` script `dir/name` (parents created) running `body`;
/// returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating the script's directory");
    }
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the script executable");
    path
}
