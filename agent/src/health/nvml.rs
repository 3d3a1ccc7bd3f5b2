//! GPU state through NVML (nvml-wrapper): GPU count, ECC, retired pages, row remapping,
//! temperature, throttling, PCIe link, NVLink, lost GPUs and the driver's recovery action, plus
//! XID and double-bit ECC events from NVML's event API.
//!
//! Without libnvidia-ml (or without GPUs) [`open`] returns [`NoGpus`]: every GPU check reports
//! NotApplicable and the agent runs as on any CPU host — unless GPUs were expected, which is a
//! fault of its own.
//!
//! Thresholds come from the driver itself (slowdown/shutdown temperatures, maximum link
//! width), never from constants here.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_proto::v1 as pb;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};

use super::{check, EventKind, EventSource, GpuBackend, GpuEvent};
use pb::{HealthAction as A, HealthState as S};

/// Every check a GPU backend reports, so that a host without GPUs lists them as not applicable.
pub const CHECKS: &[&str] = &[
    "gpu-count",
    "gpu-lost",
    "ecc",
    "retired-pages",
    "row-remap",
    "temperature",
    "throttle",
    "pcie",
    "nvlink",
    "recovery-action",
];

/// `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION` (driver r570 and later).
const FI_GPU_RECOVERY_ACTION: u32 = 230;
/// NVML's bound on NVLink links per GPU (`NVML_NVLINK_MAX_LINKS`).
const NVLINK_MAX_LINKS: u32 = 18;
/// How long one NVML event wait blocks; an event ends the wait at once.
const EVENT_WAIT_MS: u32 = 1000;

/// NVML when it loads, else [`NoGpus`]. `expected` is the GPU count the host must show (0 = any).
pub fn open(expected: u32) -> Box<dyn GpuBackend> {
    match Nvml::init() {
        // One NVML handle lives as long as the agent; leaking it lets event sets and devices
        // borrow it from their own threads.
        Ok(nvml) => Box::new(NvmlBackend::new(Box::leak(Box::new(nvml)), expected)),
        Err(e) => Box::new(NoGpus {
            expected,
            reason: format!("no NVIDIA driver: {e}"),
        }),
    }
}

/// A host without GPUs or without the driver.
pub struct NoGpus {
    pub expected: u32,
    pub reason: String,
}

impl GpuBackend for NoGpus {
    fn inventory(&mut self) -> Vec<pb::Gpu> {
        Vec::new()
    }

    fn poll(&mut self) -> Vec<pb::HealthCheck> {
        CHECKS
            .iter()
            .map(|name| {
                if *name == "gpu-count" && self.expected > 0 {
                    check(
                        name,
                        S::Unhealthy,
                        &format!(
                            "expected {} GPUs, found none ({})",
                            self.expected, self.reason
                        ),
                        A::ReplaceNode,
                    )
                } else {
                    check(name, S::NotApplicable, &self.reason, A::None)
                }
            })
            .collect()
    }

    fn event_sources(&mut self) -> Vec<Box<dyn EventSource>> {
        Vec::new()
    }

    fn expect(&mut self, gpus: u32) {
        self.expected = gpus;
    }
}

/// Per-GPU findings of one poll, folded into one result per check.
#[derive(Default)]
struct Findings {
    notes: BTreeMap<&'static str, Vec<(S, A, String)>>,
}

impl Findings {
    fn note(
        &mut self,
        check: &'static str,
        gpu: Option<u32>,
        state: S,
        action: A,
        reason: impl Into<String>,
    ) {
        let reason = match gpu {
            Some(i) => format!("gpu {i}: {}", reason.into()),
            None => reason.into(),
        };
        self.notes
            .entry(check)
            .or_default()
            .push((state, action, reason));
    }

    fn ok(&mut self, check: &'static str) {
        self.notes
            .entry(check)
            .or_default()
            .push((S::Healthy, A::None, String::new()));
    }

    /// Files an NVML error under the check that made the call: a lost GPU or one needing a
    /// reset is its own finding; an unsupported query makes the check not applicable.
    fn error(&mut self, check: &'static str, gpu: u32, what: &str, e: NvmlError) {
        match e {
            NvmlError::GpuLost => self.note(
                "gpu-lost",
                Some(gpu),
                S::Unhealthy,
                A::ReplaceNode,
                "GPU is lost (NVML_ERROR_GPU_IS_LOST)",
            ),
            NvmlError::ResetRequired => self.note(
                "gpu-lost",
                Some(gpu),
                S::Unhealthy,
                A::ResetGpu,
                "GPU needs a reset (NVML_ERROR_RESET_REQUIRED)",
            ),
            NvmlError::NotSupported | NvmlError::FunctionNotFound => self.note(
                check,
                Some(gpu),
                S::NotApplicable,
                A::None,
                format!("{what} not supported"),
            ),
            e => self.note(
                check,
                Some(gpu),
                S::Unknown,
                A::None,
                format!("{what}: {e}"),
            ),
        }
    }

    fn into_checks(self) -> Vec<pb::HealthCheck> {
        CHECKS
            .iter()
            .map(|name| {
                let notes = self.notes.get(name).map(Vec::as_slice).unwrap_or(&[]);
                if !notes.is_empty() && notes.iter().all(|(s, _, _)| *s == S::NotApplicable) {
                    return check(name, S::NotApplicable, &notes[0].2, A::None);
                }
                let worst = notes
                    .iter()
                    .filter(|(s, _, _)| *s != S::NotApplicable)
                    .max_by_key(|(s, a, _)| (rank(*s), *a as i32));
                let Some((state, action, _)) = worst else {
                    return check(name, S::Healthy, "", A::None);
                };
                let reason: Vec<&str> = notes
                    .iter()
                    .filter(|(s, _, _)| !matches!(s, S::Healthy | S::NotApplicable))
                    .map(|(_, _, r)| r.as_str())
                    .collect();
                check(name, *state, &reason.join("; "), *action)
            })
            .collect()
    }
}

fn rank(s: S) -> u8 {
    match s {
        S::Unhealthy => 4,
        S::Unknown => 3,
        S::Degraded => 2,
        _ => 1,
    }
}

/// GPUs through NVML.
pub struct NvmlBackend {
    nvml: &'static Nvml,
    expected: u32,
    /// Uncorrectable ECC count per GPU when first seen: errors from before the agent started
    /// need a reset; new ones are fatal like XID 48.
    ecc_baseline: BTreeMap<u32, u64>,
    /// Links active when first seen, per GPU; one going down later is a fault.
    links_up: BTreeMap<u32, BTreeSet<u32>>,
    /// Last NVLink error counters per (GPU, link), for deltas.
    link_errors: BTreeMap<(u32, u32), u64>,
    /// GPUs whose row-remap query answers.
    row_remap_watched: BTreeSet<u32>,
    count: u32,
}

impl NvmlBackend {
    fn new(nvml: &'static Nvml, expected: u32) -> Self {
        let count = nvml.device_count().unwrap_or(0);
        let mut backend = NvmlBackend {
            nvml,
            expected,
            ecc_baseline: BTreeMap::new(),
            links_up: BTreeMap::new(),
            link_errors: BTreeMap::new(),
            row_remap_watched: BTreeSet::new(),
            count,
        };
        for i in 0..count {
            if let Ok(dev) = nvml.device_by_index(i) {
                if remapped_rows(nvml, &dev).is_ok() {
                    backend.row_remap_watched.insert(i);
                }
            }
        }
        backend
    }

    fn poll_device(&mut self, i: u32, dev: &Device<'_>, f: &mut Findings) {
        // Temperature against the driver's own slowdown and shutdown thresholds.
        match dev.temperature(TemperatureSensor::Gpu) {
            Ok(t) => {
                let slowdown = dev
                    .temperature_threshold(TemperatureThreshold::Slowdown)
                    .ok();
                let shutdown = dev
                    .temperature_threshold(TemperatureThreshold::Shutdown)
                    .ok();
                match (slowdown, shutdown) {
                    (_, Some(s)) if t >= s => f.note(
                        "temperature",
                        Some(i),
                        S::Unhealthy,
                        A::Reboot,
                        format!("{t} °C at or above the shutdown threshold {s} °C"),
                    ),
                    (Some(s), _) if t >= s => f.note(
                        "temperature",
                        Some(i),
                        S::Degraded,
                        A::None,
                        format!("{t} °C at or above the slowdown threshold {s} °C"),
                    ),
                    _ => f.ok("temperature"),
                }
            }
            Err(e) => f.error("temperature", i, "temperature", e),
        }
        match dev.current_throttle_reasons() {
            Ok(r) => {
                let named = [
                    (ThrottleReasons::HW_SLOWDOWN, "hardware slowdown"),
                    (
                        ThrottleReasons::HW_THERMAL_SLOWDOWN,
                        "hardware thermal slowdown",
                    ),
                    (
                        ThrottleReasons::SW_THERMAL_SLOWDOWN,
                        "software thermal slowdown",
                    ),
                    (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "power brake"),
                ];
                let active: Vec<&str> = named
                    .iter()
                    .filter(|(b, _)| r.contains(*b))
                    .map(|(_, n)| *n)
                    .collect();
                if active.is_empty() {
                    f.ok("throttle");
                } else {
                    f.note(
                        "throttle",
                        Some(i),
                        S::Degraded,
                        A::None,
                        format!("clocks throttled: {}", active.join(", ")),
                    );
                }
            }
            Err(e) => f.error("throttle", i, "throttle reasons", e),
        }
        self.poll_pcie(i, dev, f);
        self.poll_memory(i, dev, f);
        self.poll_nvlink(i, dev, f);
        match dev.field_values_for(&[FieldId(FI_GPU_RECOVERY_ACTION)]) {
            Ok(mut samples) => match samples.pop() {
                Some(Ok(sample)) => match sample.value {
                    Ok(v) => {
                        let code = match v {
                            SampleValue::U32(c) => u64::from(c),
                            SampleValue::U64(c) => c,
                            SampleValue::I64(c) => c.max(0) as u64,
                            SampleValue::F64(c) => c.max(0.0) as u64,
                        };
                        match code {
                            0 => f.ok("recovery-action"),
                            1 => f.note(
                                "recovery-action",
                                Some(i),
                                S::Unhealthy,
                                A::ResetGpu,
                                "driver asks for a GPU reset",
                            ),
                            2 => f.note(
                                "recovery-action",
                                Some(i),
                                S::Unhealthy,
                                A::Reboot,
                                "driver asks for a node reboot",
                            ),
                            3 => f.note(
                                "recovery-action",
                                Some(i),
                                S::Degraded,
                                A::None,
                                "driver asks to drain peer-to-peer traffic",
                            ),
                            4 => f.note(
                                "recovery-action",
                                Some(i),
                                S::Unhealthy,
                                A::ResetGpu,
                                "driver asks to drain and reset",
                            ),
                            c => f.note(
                                "recovery-action",
                                Some(i),
                                S::Unknown,
                                A::None,
                                format!("unknown recovery action {c}"),
                            ),
                        }
                    }
                    Err(e) => f.error("recovery-action", i, "recovery action field", e),
                },
                Some(Err(e)) => f.error("recovery-action", i, "recovery action field", e),
                None => f.note(
                    "recovery-action",
                    Some(i),
                    S::NotApplicable,
                    A::None,
                    "no recovery action field",
                ),
            },
            Err(e) => f.error("recovery-action", i, "field values", e),
        }
    }

    fn poll_pcie(&mut self, i: u32, dev: &Device<'_>, f: &mut Findings) {
        let (width, max_width) = match (dev.current_pcie_link_width(), dev.max_pcie_link_width()) {
            (Ok(w), Ok(m)) => (w, m),
            (Err(e), _) | (_, Err(e)) => return f.error("pcie", i, "PCIe link width", e),
        };
        let gen = dev.current_pcie_link_gen().unwrap_or(0);
        let max_gen = dev.max_pcie_link_gen().unwrap_or(0);
        // Idle GPUs lower their link generation to save power, so only a narrower link than
        // the maximum counts as degraded; a lower generation is reported alongside it.
        if width < max_width {
            f.note(
                "pcie",
                Some(i),
                S::Degraded,
                A::None,
                format!("PCIe link x{width} (max x{max_width}), gen {gen} (max {max_gen})"),
            );
        } else {
            f.ok("pcie");
        }
    }

    fn poll_memory(&mut self, i: u32, dev: &Device<'_>, f: &mut Findings) {
        match dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
            Ok(n) => {
                let base = *self.ecc_baseline.entry(i).or_insert(n);
                if n > base {
                    f.note(
                        "ecc",
                        Some(i),
                        S::Unhealthy,
                        A::ReplaceNode,
                        format!("{} new uncorrectable ECC errors", n - base),
                    );
                } else if n > 0 {
                    f.note(
                        "ecc",
                        Some(i),
                        S::Unhealthy,
                        A::ResetGpu,
                        format!("{n} uncorrectable ECC errors since the driver loaded"),
                    );
                } else {
                    f.ok("ecc");
                }
            }
            Err(e) => f.error("ecc", i, "ECC counters", e),
        }
        match (
            dev.retired_pages(RetirementCause::DoubleBitEccError),
            dev.are_pages_pending_retired(),
        ) {
            (Ok(pages), Ok(pending)) => {
                if pending {
                    f.note(
                        "retired-pages",
                        Some(i),
                        S::Unhealthy,
                        A::ResetGpu,
                        format!(
                            "pages pending retirement ({} retired for double-bit ECC)",
                            pages.len()
                        ),
                    );
                } else if !pages.is_empty() {
                    f.note(
                        "retired-pages",
                        Some(i),
                        S::Degraded,
                        A::None,
                        format!("{} pages retired for double-bit ECC", pages.len()),
                    );
                } else {
                    f.ok("retired-pages");
                }
            }
            (Err(e), _) | (_, Err(e)) => f.error("retired-pages", i, "retired pages", e),
        }
        match remapped_rows(self.nvml, dev) {
            Ok(r) if r.failed => f.note(
                "row-remap",
                Some(i),
                S::Unhealthy,
                A::ReplaceNode,
                format!(
                    "row remapping failed ({} uncorrectable rows)",
                    r.uncorrectable
                ),
            ),
            Ok(r) if r.pending => f.note(
                "row-remap",
                Some(i),
                S::Unhealthy,
                A::ResetGpu,
                "row remapping pending: needs a GPU reset",
            ),
            Ok(_) => f.ok("row-remap"),
            Err(e) => f.error("row-remap", i, "remapped rows", e),
        }
    }

    fn poll_nvlink(&mut self, i: u32, dev: &Device<'_>, f: &mut Findings) {
        let mut seen_any = false;
        let first = !self.links_up.contains_key(&i);
        for link in 0..NVLINK_MAX_LINKS {
            let l = dev.link_wrapper_for(link);
            let active = match l.is_active() {
                Ok(a) => a,
                // Past the GPU's last link, or no NVLink at all.
                Err(
                    NvmlError::NotSupported | NvmlError::InvalidArg | NvmlError::FunctionNotFound,
                ) => continue,
                Err(e) => {
                    f.error("nvlink", i, &format!("link {link} state"), e);
                    continue;
                }
            };
            seen_any = true;
            let up = self.links_up.entry(i).or_default();
            if first && active {
                up.insert(link);
            }
            if !active && up.contains(&link) {
                f.note(
                    "nvlink",
                    Some(i),
                    S::Degraded,
                    A::ResetGpu,
                    format!("link {link} went down"),
                );
                continue;
            }
            let errors: u64 = [
                ErrorCounter::DlReplay,
                ErrorCounter::DlRecovery,
                ErrorCounter::DlCrcFlit,
                ErrorCounter::DlCrcData,
            ]
            .into_iter()
            .filter_map(|c| l.error_counter(c).ok())
            .sum();
            let before = self.link_errors.insert((i, link), errors);
            match before {
                Some(b) if errors > b => f.note(
                    "nvlink",
                    Some(i),
                    S::Degraded,
                    A::None,
                    format!("link {link}: {} new replay/recovery/CRC errors", errors - b),
                ),
                _ => f.ok("nvlink"),
            }
        }
        if !seen_any {
            f.note("nvlink", Some(i), S::NotApplicable, A::None, "no NVLink");
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&mut self) -> Vec<pb::Gpu> {
        (0..self.count)
            .filter_map(|i| {
                let dev = self.nvml.device_by_index(i).ok()?;
                Some(pb::Gpu {
                    index: i,
                    uuid: dev.uuid().unwrap_or_default(),
                    name: dev.name().unwrap_or_default(),
                    memory_bytes: dev.memory_info().map_or(0, |m| m.total),
                })
            })
            .collect()
    }

    fn poll(&mut self) -> Vec<pb::HealthCheck> {
        let mut f = Findings::default();
        let count = match self.nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                f.note(
                    "gpu-count",
                    None,
                    S::Unknown,
                    A::None,
                    format!("device count: {e}"),
                );
                0
            }
        };
        if count < self.expected {
            f.note(
                "gpu-count",
                None,
                S::Unhealthy,
                A::ReplaceNode,
                format!("{count} of {} expected GPUs visible", self.expected),
            );
        } else {
            f.ok("gpu-count");
        }
        for i in 0..count {
            match self.nvml.device_by_index(i) {
                Ok(dev) => {
                    f.ok("gpu-lost");
                    self.poll_device(i, &dev, &mut f);
                }
                Err(e) => f.error("gpu-lost", i, "device handle", e),
            }
        }
        f.into_checks()
    }

    fn event_sources(&mut self) -> Vec<Box<dyn EventSource>> {
        let mut sources: Vec<Box<dyn EventSource>> = Vec::new();
        for i in 0..self.count {
            let Ok(dev) = self.nvml.device_by_index(i) else {
                continue;
            };
            // Not every GPU delivers double-bit ECC events: fall back to XIDs alone.
            for types in [
                EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR,
                EventTypes::CRITICAL_XID_ERROR,
            ] {
                let Ok(set) = self.nvml.create_event_set() else {
                    break;
                };
                match dev.register_events(types, set) {
                    Ok(set) => {
                        sources.push(Box::new(NvmlEvents { gpu: i, set }));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(gpu = i, "NVML events {types:?} unavailable: {}", e.error)
                    }
                }
            }
        }
        sources
    }

    fn expect(&mut self, gpus: u32) {
        self.expected = gpus;
    }

    fn watches_row_remap(&self) -> bool {
        self.count > 0 && self.row_remap_watched.len() as u32 == self.count
    }
}

/// XID and ECC events of one GPU.
struct NvmlEvents {
    gpu: u32,
    set: EventSet<'static>,
}

impl EventSource for NvmlEvents {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn wait(&mut self) -> Result<Vec<GpuEvent>, String> {
        let event = |kind, detail: &str| GpuEvent {
            gpu: Some(self.gpu),
            pci: None,
            kind,
            source: "nvml",
            detail: detail.to_string(),
        };
        match self.set.wait(EVENT_WAIT_MS) {
            Ok(data) => {
                let mut events = Vec::new();
                if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    match data.event_data {
                        Some(XidError::Value(code)) => {
                            events.push(event(EventKind::Xid(code as u32), ""))
                        }
                        _ => tracing::warn!(gpu = self.gpu, "XID event without a code"),
                    }
                }
                if data.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    events.push(event(EventKind::EccDbe, ""));
                }
                Ok(events)
            }
            Err(NvmlError::Timeout) => Ok(Vec::new()),
            Err(NvmlError::GpuLost) => {
                Ok(vec![event(EventKind::GpuLost, "event wait: GPU is lost")])
            }
            Err(e) => Err(format!("NVML event wait on GPU {}: {e}", self.gpu)),
        }
    }
}

struct RemappedRows {
    uncorrectable: u32,
    pending: bool,
    failed: bool,
}

/// `nvmlDeviceGetRemappedRows`, which nvml-wrapper 0.13 does not wrap.
fn remapped_rows(nvml: &Nvml, dev: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let sym = nvml
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .map_err(|_| NvmlError::FunctionNotFound)?;
    let (mut corr, mut unc, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the symbol was loaded from libnvidia-ml with this signature; the device handle is
    // valid for the life of `dev`; the four out-pointers point at live locals.
    #[allow(unsafe_code)]
    let code = unsafe { sym(dev.handle(), &mut corr, &mut unc, &mut pending, &mut failed) };
    nvml_wrapper::error::nvml_try(code)?;
    Ok(RemappedRows {
        uncorrectable: unc,
        pending: pending != 0,
        failed: failed != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_fold_to_the_worst_gpu_with_every_reason() {
        let mut f = Findings::default();
        f.ok("temperature");
        f.note("temperature", Some(1), S::Degraded, A::None, "90 °C");
        f.note("temperature", Some(3), S::Unhealthy, A::Reboot, "99 °C");
        f.note("nvlink", Some(0), S::NotApplicable, A::None, "no NVLink");
        f.error("ecc", 2, "ECC counters", NvmlError::GpuLost);
        let checks: BTreeMap<String, pb::HealthCheck> = f
            .into_checks()
            .into_iter()
            .map(|c| (c.check.clone(), c))
            .collect();
        let t = &checks["temperature"];
        assert_eq!((t.state, t.action), (S::Unhealthy as i32, A::Reboot as i32));
        assert_eq!(t.reason, "gpu 1: 90 °C; gpu 3: 99 °C");
        assert_eq!(checks["nvlink"].state, S::NotApplicable as i32);
        assert_eq!(
            checks["gpu-lost"].action,
            A::ReplaceNode as i32,
            "a lost GPU is filed under gpu-lost"
        );
        assert_eq!(
            checks["pcie"].state,
            S::Healthy as i32,
            "nothing noted: healthy"
        );
    }

    #[test]
    fn no_gpus_is_not_applicable_unless_gpus_were_expected() {
        let mut none = NoGpus {
            expected: 0,
            reason: "no driver".into(),
        };
        assert!(none
            .poll()
            .iter()
            .all(|c| c.state == S::NotApplicable as i32));
        let mut missing = NoGpus {
            expected: 8,
            reason: "no driver".into(),
        };
        let count = missing
            .poll()
            .into_iter()
            .find(|c| c.check == "gpu-count")
            .unwrap();
        assert_eq!(
            (count.state, count.action),
            (S::Unhealthy as i32, A::ReplaceNode as i32)
        );
    }

    #[test]
    fn open_without_a_driver_gives_no_gpus() {
        // On a host with NVIDIA GPUs this finds them instead; both must not panic.
        let mut backend = open(0);
        let checks = backend.poll();
        assert_eq!(checks.len(), CHECKS.len());
    }
}
