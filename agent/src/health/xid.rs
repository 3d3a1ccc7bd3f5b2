//! What an XID means for the node: a catalog kept as data, with its sources, plus the operator's
//! overrides and ignore list from the agent config.
//!
//! Sources of the default classes:
//! - fatal (replace the node): the codes every public catalog agrees on — NVIDIA's "XID Errors"
//!   catalog (docs.nvidia.com/deploy/xid-errors), DCGM's health watches, GPUd's XID component and
//!   NVSentinel's XID rules: 48, 74, 79, 95, 119, 120, 140, and 64 (row-remap failure) unless the
//!   row-remap check watches the GPUs;
//! - reboot / reboot plus inspection: GPUd's XID catalog (`pkg/nvidia-query/xid`);
//! - worker faults (restart the worker, the hardware is fine): 13, 31, 43, 45 — graphics exception,
//!   MMU fault, channel stopped, preemptive cleanup. These are raised by the application's own bad
//!   accesses or by its termination; the catalogs disagree on them, which is why every class can be
//!   overridden in the config.
//!
//! Codes not in the table are recorded as Degraded with no action: seen, shown to operators, never
//! fenced on.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// What an XID asks for, from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XidClass {
    /// Not acted on: the code is on the ignore list.
    Ignore,
    /// Recorded for operators (Degraded, no action).
    Info,
    /// The application caused it: restart the worker, the node stays in service.
    Worker,
    /// The GPU needs a reset.
    ResetGpu,
    /// The host needs a reboot.
    Reboot,
    /// The node must be replaced: fenced at once.
    Fatal,
}

/// One row of the catalog.
struct XidRow {
    code: u32,
    class: XidClass,
    meaning: &'static str,
}

/// The default catalog (see the module doc for the sources).
const CATALOG: &[XidRow] = &[
    XidRow {
        code: 13,
        class: XidClass::Worker,
        meaning: "graphics engine exception",
    },
    XidRow {
        code: 31,
        class: XidClass::Worker,
        meaning: "GPU memory page fault (MMU fault)",
    },
    XidRow {
        code: 43,
        class: XidClass::Worker,
        meaning: "GPU stopped processing (channel stopped)",
    },
    XidRow {
        code: 45,
        class: XidClass::Worker,
        meaning: "preemptive cleanup after an earlier error",
    },
    XidRow {
        code: 48,
        class: XidClass::Fatal,
        meaning: "double-bit ECC error",
    },
    XidRow {
        code: 74,
        class: XidClass::Fatal,
        meaning: "NVLink error",
    },
    XidRow {
        code: 79,
        class: XidClass::Fatal,
        meaning: "GPU has fallen off the bus",
    },
    XidRow {
        code: 95,
        class: XidClass::Fatal,
        meaning: "uncontained ECC error",
    },
    XidRow {
        code: 119,
        class: XidClass::Fatal,
        meaning: "GSP RPC timeout",
    },
    XidRow {
        code: 120,
        class: XidClass::Fatal,
        meaning: "GSP error",
    },
    XidRow {
        code: 140,
        class: XidClass::Fatal,
        meaning: "unrecovered ECC error",
    },
    XidRow {
        code: 64,
        class: XidClass::Fatal,
        meaning: "ECC page retirement or row remapping failure",
    },
    // GPUd: reboot.
    XidRow {
        code: 9,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 12,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 16,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 18,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 19,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 26,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 27,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 28,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 29,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 30,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 33,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 34,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 35,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 36,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 42,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 46,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 47,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 59,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 60,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 61,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 78,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    // GPUd: reboot plus hardware inspection (rebooting is what the agent can suggest).
    XidRow {
        code: 32,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 38,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 44,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 62,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 63,
        class: XidClass::ResetGpu,
        meaning: "ECC page retirement or row remapping recorded",
    },
    XidRow {
        code: 65,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 68,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 69,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 110,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 121,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 123,
        class: XidClass::Reboot,
        meaning: "see NVIDIA's XID catalog",
    },
    // GPUd: hardware inspection.
    XidRow {
        code: 81,
        class: XidClass::Fatal,
        meaning: "see NVIDIA's XID catalog",
    },
    XidRow {
        code: 143,
        class: XidClass::Fatal,
        meaning: "see NVIDIA's XID catalog",
    },
];

/// What the agent reports for one XID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidVerdict {
    pub code: u32,
    pub class: XidClass,
    pub meaning: String,
}

impl XidVerdict {
    /// The health state and action this verdict stands for; None when ignored.
    pub fn health(&self) -> Option<(pb::HealthState, pb::HealthAction)> {
        use pb::{HealthAction as A, HealthState as S};
        Some(match self.class {
            XidClass::Ignore => return None,
            XidClass::Info => (S::Degraded, A::None),
            XidClass::Worker => (S::Degraded, A::RestartWorker),
            XidClass::ResetGpu => (S::Unhealthy, A::ResetGpu),
            XidClass::Reboot => (S::Unhealthy, A::Reboot),
            XidClass::Fatal => (S::Unhealthy, A::ReplaceNode),
        })
    }
}

/// The catalog with the config's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidPolicy {
    overrides: BTreeMap<u32, XidClass>,
    ignore: BTreeSet<u32>,
    /// True when the row-remap check watches every GPU: XID 64 is then left to that check
    /// (which replaces the node when remapping failed) instead of fencing on the XID itself.
    row_remap_watched: bool,
}

impl Default for XidPolicy {
    fn default() -> Self {
        XidPolicy::new(BTreeMap::new(), BTreeSet::new())
    }
}

impl XidPolicy {
    pub fn new(overrides: BTreeMap<u32, XidClass>, ignore: BTreeSet<u32>) -> Self {
        XidPolicy {
            overrides,
            ignore,
            row_remap_watched: false,
        }
    }

    /// Says whether the row-remap check covers XID 64 on this host.
    pub fn set_row_remap_watched(&mut self, watched: bool) {
        self.row_remap_watched = watched;
    }

    pub fn classify(&self, code: u32) -> XidVerdict {
        let row = CATALOG.iter().find(|r| r.code == code);
        let meaning = row.map_or("not in the catalog", |r| r.meaning).to_string();
        let default = match row {
            Some(r) if r.code == 64 && self.row_remap_watched => XidClass::ResetGpu,
            Some(r) => r.class,
            None => XidClass::Info,
        };
        let class = if self.ignore.contains(&code) {
            XidClass::Ignore
        } else {
            self.overrides.get(&code).copied().unwrap_or(default)
        };
        XidVerdict {
            code,
            class,
            meaning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_fatal_xid_replaces_the_node() {
        let policy = XidPolicy::default();
        for code in [48, 74, 79, 95, 119, 120, 140, 64] {
            let v = policy.classify(code);
            assert_eq!(v.class, XidClass::Fatal, "xid {code}");
            assert_eq!(
                v.health(),
                Some((pb::HealthState::Unhealthy, pb::HealthAction::ReplaceNode)),
                "xid {code}"
            );
        }
    }

    #[test]
    fn xid_64_is_left_to_the_row_remap_check_when_it_runs() {
        let mut policy = XidPolicy::default();
        policy.set_row_remap_watched(true);
        assert_eq!(policy.classify(64).class, XidClass::ResetGpu);
        assert_eq!(policy.classify(79).class, XidClass::Fatal);
    }

    #[test]
    fn application_xids_are_worker_faults() {
        let policy = XidPolicy::default();
        for code in [13, 31, 43, 45] {
            let v = policy.classify(code);
            assert_eq!(
                v.health(),
                Some((pb::HealthState::Degraded, pb::HealthAction::RestartWorker)),
                "xid {code}"
            );
        }
    }

    #[test]
    fn ignore_list_and_overrides_win_over_the_catalog() {
        let policy = XidPolicy::new(
            BTreeMap::from([(13, XidClass::Fatal), (94, XidClass::Worker)]),
            BTreeSet::from([79]),
        );
        assert_eq!(policy.classify(79).health(), None, "ignored");
        assert_eq!(policy.classify(13).class, XidClass::Fatal);
        assert_eq!(policy.classify(94).class, XidClass::Worker);
        assert_eq!(
            policy.classify(48).class,
            XidClass::Fatal,
            "untouched rows keep their class"
        );
    }

    #[test]
    fn unknown_codes_are_recorded_not_acted_on() {
        let v = XidPolicy::default().classify(999);
        assert_eq!(
            v.health(),
            Some((pb::HealthState::Degraded, pb::HealthAction::None))
        );
    }

    #[test]
    fn catalog_has_each_code_once() {
        let mut seen = BTreeSet::new();
        for row in CATALOG {
            assert!(seen.insert(row.code), "xid {} twice", row.code);
        }
    }
}
