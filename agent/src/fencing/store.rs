//! `<state_dir>/fencing.json`: the [`Fencing`] state kept across agent restarts, and the one
//! instance of it that the session and the supervisor share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Fencing, OlderTerm};

/// Where the state lives in the agent's state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("fencing.json")
}

/// Reads the state; a missing file is a fresh agent, an unreadable one is logged and treated
/// as fresh (the coordinator's own term check still guards the new generation).
pub fn load(state_dir: &Path) -> Fencing {
    let path = path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{} is unreadable ({e}); starting with no term",
                path.display()
            );
            Fencing::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Fencing::default(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; starting with no term", path.display());
            Fencing::default()
        }
    }
}

/// Writes the state atomically and durably (see [`crate::durable`]).
pub fn save(state_dir: &Path, fencing: &Fencing) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(fencing).map_err(std::io::Error::other)?;
    crate::durable::write(&path(state_dir), &bytes)
}

/// The agent's one fencing state, shared by the session and the supervisor: every decision
/// runs under its lock and what it changed is on disk before the lock is released, so
/// decisions never interleave and none is forgotten by a restarted agent.
#[derive(Debug, Clone)]
pub struct SharedFencing {
    state: Arc<Mutex<Fencing>>,
    state_dir: PathBuf,
}

impl SharedFencing {
    /// The state kept in `state_dir` (see [`load`]).
    pub fn load(state_dir: &Path) -> SharedFencing {
        SharedFencing {
            state: Arc::new(Mutex::new(load(state_dir))),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The file the state is kept in.
    pub fn path(&self) -> PathBuf {
        path(&self.state_dir)
    }

    /// The highest coordinator term seen.
    pub fn term(&self) -> u64 {
        self.lock().term()
    }

    /// Whether a command of `term` may be carried out; changes nothing.
    pub fn admit_term(&self, term: u64) -> Result<(), OlderTerm> {
        self.lock().admit_term(term)
    }

    /// Runs `decision` on the state and saves what it changed, whether it admitted or refused
    /// (a launch of a stale generation still raises the term). A failed save is logged: the
    /// decision stands for this agent's life.
    pub fn decide<T>(&self, decision: impl FnOnce(&mut Fencing) -> T) -> T {
        let mut state = self.lock();
        let before = state.clone();
        let verdict = decision(&mut state);
        if *state != before {
            if let Err(e) = save(&self.state_dir, &state) {
                tracing::warn!("cannot write {}: {e}", self.path().display());
            }
        }
        verdict
    }

    fn lock(&self) -> MutexGuard<'_, Fencing> {
        // The state is plain data, whole after every decision: a panic elsewhere while the lock
        // was held leaves nothing half-done to guard against.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_restart_and_a_bad_file_is_a_fresh_start() {
        let dir = crate::testdir::Scratch::new("fencing-store");
        assert_eq!(load(&dir), Fencing::default());
        let shared = SharedFencing::load(&dir);
        shared.decide(|f| f.admit_launch("job-1", 3, 7)).unwrap();
        let restarted = SharedFencing::load(&dir);
        assert_eq!(restarted.term(), 7);
        assert_eq!(load(&dir).generation("job-1"), 3);
        assert!(restarted.admit_term(6).is_err());
        std::fs::write(path(&dir), b"not json").unwrap();
        assert_eq!(load(&dir), Fencing::default());
    }

    #[test]
    fn a_refusal_that_raised_the_term_is_saved_and_a_plain_refusal_writes_nothing() {
        let dir = crate::testdir::Scratch::new("fencing-decide");
        let shared = SharedFencing::load(&dir);
        shared.decide(|f| f.admit_launch("j", 2, 5)).unwrap();
        assert!(shared.decide(|f| f.admit_launch("j", 2, 6)).is_err());
        assert_eq!(load(&dir).term(), 6);
        std::fs::remove_file(path(&dir)).unwrap();
        assert!(shared.decide(|f| f.observe(4)).is_err());
        assert!(!path(&dir).exists(), "nothing changed, nothing written");
        // Clones are one state.
        shared.clone().decide(|f| f.observe(8)).unwrap();
        assert_eq!(shared.term(), 8);
    }
}
