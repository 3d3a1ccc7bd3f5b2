//! # holdfast-core
//!
//! What both daemons share and the coordinator decides, with no network, no async runtime and no
//! files: every function here takes the time as an argument (the daemons read the clock once,
//! through [`now_ms`], and pass it down).
//!
//! ## Layout
//! - [`config_file`] — TOML settings files: errors that name the file, the line and the key; the
//!   fixture test every daemon's config runs.

pub mod config_file;

/// Wall-clock time in milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Matches `step 12`, `step=12`, `Step: 12` in a worker's output.
pub const DEFAULT_PROGRESS_REGEX: &str = r"(?i)\bstep[\s:=]+(\d+)";

/// The current wall-clock time. The daemons' one clock read: everything below their shells gets
/// `now` passed in.
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
