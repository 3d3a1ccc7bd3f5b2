//! Reports on recorded incidents and on what failures cost: MTTD / MTTR percentiles, a job's
//! ETTR (effective training time ratio), and the what-if lost-time model.
//!
//! Pure arithmetic over the operator API's messages: the CLI (`holdfast report`,
//! `holdfast what-if`), the dashboard's numbers and the coordinator's `/metrics` all use it. No
//! clock is read here; callers pass `now`.
//!
//! The what-if model is the one that reproduces the published managed-service tables
//! (REFERENCE.md): compute time C = GPU-hours / GPUs; failures per hour f = instances × rate;
//! time lost = f × downtime per failure × C; total = C + lost. That model ignores the work lost
//! since the last checkpoint; [`what_if`] adds half a checkpoint interval per failure when the
//! interval is given, and says so in its output.

use holdfast_proto::v1 as pb;
use serde::Serialize;

/// Bad input to a report, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error("{field} must be a finite number greater than 0 (got {value})")]
    NotPositive { field: &'static str, value: f64 },
    #[error("{field} must be a finite number of at least 0 (got {value})")]
    Negative { field: &'static str, value: f64 },
    #[error("no recovered incident is recorded yet, so there is no measured downtime: pass --downtime-min")]
    NoMeasuredDowntime,
}

/// The published per-failure downtime of a managed service, minutes (detect 1.5 + replace 15 +
/// resume 23.5; REFERENCE.md).
pub const MANAGED_DOWNTIME_MIN: f64 = 40.0;
/// The published per-failure downtime of a typical self-managed cluster, minutes (root-cause 10
/// + replace 240 + resume 30; REFERENCE.md).
pub const SELF_MANAGED_DOWNTIME_MIN: f64 = 280.0;

/// Inputs of the what-if model.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIfInput {
    /// Instances (hosts) in the cluster.
    pub instances: f64,
    /// GPUs on each instance.
    pub gpus_per_instance: f64,
    /// GPU-hours the training needs without failures.
    pub gpu_hours: f64,
    /// Instance failures per instance-hour, in percent (0.05 means 0.05 %/h).
    pub failure_rate_pct: f64,
    /// Downtime per failure, minutes.
    pub downtime_min: f64,
    /// Minutes between checkpoints; when given, half of it per failure is counted as lost work.
    pub checkpoint_interval_min: Option<f64>,
}

/// What the model predicts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIf {
    /// Failure-free wall time, days.
    pub compute_days: f64,
    /// Expected failures over the compute time.
    pub failures: f64,
    /// Mean time between failures of the whole cluster, hours (1 / f).
    pub mtbf_hours: f64,
    /// Days lost to downtime (and to redone work when a checkpoint interval is given).
    pub days_lost: f64,
    /// Of `days_lost`, the days of work redone since the last checkpoint.
    pub lost_work_days: f64,
    /// compute_days + days_lost.
    pub total_days: f64,
}

fn positive(field: &'static str, value: f64) -> Result<f64, ReportError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ReportError::NotPositive { field, value })
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<f64, ReportError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ReportError::Negative { field, value })
    }
}

/// Runs the lost-time model.
pub fn what_if(input: &WhatIfInput) -> Result<WhatIf, ReportError> {
    let instances = positive("--instances", input.instances)?;
    let gpus = positive("--gpus-per-instance", input.gpus_per_instance)?;
    let gpu_hours = positive("--gpu-hours", input.gpu_hours)?;
    let rate = non_negative("--failure-rate", input.failure_rate_pct)? / 100.0;
    let downtime_h = non_negative("--downtime-min", input.downtime_min)? / 60.0;
    let interval_h = match input.checkpoint_interval_min {
        Some(c) => non_negative("--checkpoint-interval-min", c)? / 60.0,
        None => 0.0,
    };
    let compute_h = gpu_hours / (instances * gpus);
    let per_hour = instances * rate;
    let failures = per_hour * compute_h;
    let downtime_lost_h = failures * downtime_h;
    // On average a failure lands halfway between two checkpoints.
    let lost_work_h = failures * interval_h / 2.0;
    let lost_h = downtime_lost_h + lost_work_h;
    Ok(WhatIf {
        compute_days: compute_h / 24.0,
        failures,
        mtbf_hours: if per_hour > 0.0 {
            1.0 / per_hour
        } else {
            f64::INFINITY
        },
        days_lost: lost_h / 24.0,
        lost_work_days: lost_work_h / 24.0,
        total_days: (compute_h + lost_h) / 24.0,
    })
}

/// Share of the total time saved by recovering in `fast` instead of `slow` minutes, percent.
pub fn reduction_pct(
    input: &WhatIfInput,
    fast_min: f64,
    slow_min: f64,
) -> Result<f64, ReportError> {
    let fast = what_if(&WhatIfInput {
        downtime_min: fast_min,
        ..input.clone()
    })?;
    let slow = what_if(&WhatIfInput {
        downtime_min: slow_min,
        ..input.clone()
    })?;
    Ok(100.0 * (slow.total_days - fast.total_days) / slow.total_days)
}

/// Nearest-rank percentile (`p` in 0..=100) of `values`; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// The durations of one recovered incident, seconds, in the published table's segments plus
/// holdfast's finer phases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseDurations {
    pub id: u64,
    /// Fault → detection (MTTD).
    pub detect_s: f64,
    /// Detection → fenced.
    pub fence_s: f64,
    /// Fenced → every rank has a node.
    pub replace_s: f64,
    /// Replaced → every worker of the new generation started (bootstrap and relaunch).
    pub bootstrap_s: f64,
    /// Relaunched → progress past the resumed step.
    pub resume_s: f64,
    /// Fault → resumed (MTTR).
    pub total_s: f64,
}

fn gap_s(from: i64, to: i64) -> f64 {
    (to - from).max(0) as f64 / 1000.0
}

/// Phase durations of a recovered incident; None while it is open or when it was abandoned.
pub fn phases(i: &pb::Incident) -> Option<PhaseDurations> {
    if i.open || i.resumed_unix_ms == 0 {
        return None;
    }
    // A phase not stamped (e.g. no fence for a restart in place) takes no time: the next one
    // starts where the previous stamped one ended.
    let fenced = if i.fenced_unix_ms > 0 {
        i.fenced_unix_ms
    } else {
        i.detected_unix_ms
    };
    let replaced = if i.replaced_unix_ms > 0 {
        i.replaced_unix_ms
    } else {
        fenced
    };
    let relaunched = if i.relaunched_unix_ms > 0 {
        i.relaunched_unix_ms
    } else {
        replaced
    };
    Some(PhaseDurations {
        id: i.id,
        detect_s: gap_s(i.fault_unix_ms, i.detected_unix_ms),
        fence_s: gap_s(i.detected_unix_ms, fenced),
        replace_s: gap_s(fenced, replaced),
        bootstrap_s: gap_s(replaced, relaunched),
        resume_s: gap_s(relaunched, i.resumed_unix_ms),
        total_s: gap_s(i.fault_unix_ms, i.resumed_unix_ms),
    })
}

/// P50 and P90 of one column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
}

fn pcts(values: &[f64]) -> Option<Percentiles> {
    Some(Percentiles {
        p50: percentile(values, 50.0)?,
        p90: percentile(values, 90.0)?,
    })
}

/// MTTD / MTTR over recovered incidents, in the shape of the published managed-service table:
/// detect, replace (detection → replaced, fencing included), resume (replaced → resumed), total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecoverySummary {
    /// Recovered incidents counted.
    pub incidents: usize,
    /// Incidents still open or abandoned, not counted.
    pub not_recovered: usize,
    pub detect_s: Option<Percentiles>,
    pub replace_s: Option<Percentiles>,
    pub resume_s: Option<Percentiles>,
    /// Fault → resumed: the MTTR.
    pub total_s: Option<Percentiles>,
    /// Mean fault → resumed, minutes: the per-failure downtime the what-if model takes.
    pub mean_downtime_min: Option<f64>,
}

/// Summarises recorded incidents.
pub fn recovery_summary(incidents: &[pb::Incident]) -> RecoverySummary {
    let done: Vec<PhaseDurations> = incidents.iter().filter_map(phases).collect();
    let col = |f: fn(&PhaseDurations) -> f64| done.iter().map(f).collect::<Vec<f64>>();
    let totals = col(|p| p.total_s);
    RecoverySummary {
        incidents: done.len(),
        not_recovered: incidents.len() - done.len(),
        detect_s: pcts(&col(|p| p.detect_s)),
        replace_s: pcts(&col(|p| p.fence_s + p.replace_s)),
        resume_s: pcts(&col(|p| p.bootstrap_s + p.resume_s)),
        total_s: pcts(&totals),
        mean_downtime_min: (!totals.is_empty())
            .then(|| totals.iter().sum::<f64>() / totals.len() as f64 / 60.0),
    }
}

/// A job's effective training time ratio.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ettr {
    pub job_id: String,
    /// Submission → end (or now), seconds.
    pub wall_s: f64,
    /// Σ fault → resumed (or end/now while open), seconds.
    pub downtime_s: f64,
    /// Time spent redoing steps between the resumed checkpoint and the fault, seconds.
    pub lost_work_s: f64,
    /// wall − downtime − lost work.
    pub productive_s: f64,
    /// productive / wall, 0..=1.
    pub ettr: f64,
    /// Steps redone after recoveries.
    pub lost_steps: u64,
}

/// ETTR of `job` from its incidents (other jobs' incidents are ignored). The running time is
/// wall − downtime; in it the job executed its final step count plus every redone step, so the
/// redone share of the running time is work lost to failures.
pub fn ettr(job: &pb::Job, incidents: &[pb::Incident], now_unix_ms: i64) -> Ettr {
    let end = if job.finished_unix_ms > 0 {
        job.finished_unix_ms
    } else {
        now_unix_ms
    };
    let wall_s = gap_s(job.submitted_unix_ms, end);
    let mine: Vec<&pb::Incident> = incidents
        .iter()
        .filter(|i| i.job_id == job.job_id)
        .collect();
    let downtime_s: f64 = mine
        .iter()
        .map(|i| {
            let until = if i.resumed_unix_ms > 0 {
                i.resumed_unix_ms
            } else {
                end
            };
            gap_s(i.fault_unix_ms.max(job.submitted_unix_ms), until)
        })
        .sum::<f64>()
        .min(wall_s);
    let lost_steps: u64 = mine
        .iter()
        .filter(|i| i.resumed_unix_ms > 0)
        .map(|i| i.fault_step.saturating_sub(i.resumed_from_step))
        .sum();
    let running_s = wall_s - downtime_s;
    let executed = job.step + lost_steps;
    let lost_work_s = if executed > 0 {
        running_s * lost_steps as f64 / executed as f64
    } else {
        0.0
    };
    let productive_s = (running_s - lost_work_s).max(0.0);
    Ettr {
        job_id: job.job_id.clone(),
        wall_s,
        downtime_s,
        lost_work_s,
        productive_s,
        ettr: if wall_s > 0.0 {
            productive_s / wall_s
        } else {
            0.0
        },
        lost_steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(downtime_min: f64) -> WhatIfInput {
        WhatIfInput {
            instances: 256.0,
            gpus_per_instance: 8.0,
            gpu_hours: 10_000_000.0,
            failure_rate_pct: 0.05,
            downtime_min,
            checkpoint_interval_min: None,
        }
    }

    #[test]
    fn worked_example_gives_221_and_325_days() {
        let fast = what_if(&example(40.0)).unwrap();
        let slow = what_if(&example(280.0)).unwrap();
        assert!((fast.compute_days - 203.5).abs() < 0.1, "{fast:?}");
        assert!((fast.days_lost - 17.0).abs() < 1.0, "{fast:?}");
        assert_eq!(fast.total_days.round(), 221.0);
        // 121.5: the published text truncates it to 121.
        assert!((slow.days_lost - 121.0).abs() < 1.0, "{slow:?}");
        assert_eq!(slow.total_days.round(), 325.0);
        assert_eq!((slow.total_days - fast.total_days).round(), 104.0);
        assert_eq!(
            reduction_pct(&example(0.0), 40.0, 280.0).unwrap().round(),
            32.0
        );
        assert!((fast.mtbf_hours - 7.8125).abs() < 1e-9);
    }

    const SIZES: [f64; 8] = [4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

    #[test]
    fn reduction_table_within_two_points() {
        let published: [(f64, [f64; 8]); 4] = [
            (0.01, [0.0, 0.0, 1.0, 1.0, 2.0, 5.0, 9.0, 17.0]),
            (0.02, [0.0, 1.0, 1.0, 2.0, 5.0, 9.0, 17.0, 28.0]),
            (0.05, [1.0, 2.0, 3.0, 6.0, 11.0, 20.0, 32.0, 48.0]),
            (0.07, [1.0, 2.0, 4.0, 8.0, 15.0, 25.0, 40.0, 55.0]),
        ];
        for (rate, row) in published {
            for (size, want) in SIZES.iter().zip(row) {
                let input = WhatIfInput {
                    instances: *size,
                    failure_rate_pct: rate,
                    ..example(0.0)
                };
                let got = reduction_pct(&input, 40.0, 280.0).unwrap();
                assert!(
                    (got - want).abs() <= 2.0,
                    "rate {rate} size {size}: model {got:.2} vs published {want}"
                );
            }
        }
    }

    #[test]
    fn mtbf_table_within_rounding() {
        let published = [2500.0, 1250.0, 625.0, 313.0, 157.0, 79.0, 40.0, 20.0];
        for (size, want) in SIZES.iter().zip(published) {
            let input = WhatIfInput {
                instances: *size,
                failure_rate_pct: 0.01,
                ..example(40.0)
            };
            let got = what_if(&input).unwrap().mtbf_hours;
            assert_eq!(got.ceil(), want, "size {size}: {got}");
        }
        // The prose examples: 256 at 0.02 %/h ≈ 20 h; 512 at 0.08 %/h ≈ 2.4 h.
        let m = |instances, rate| {
            what_if(&WhatIfInput {
                instances,
                failure_rate_pct: rate,
                ..example(40.0)
            })
            .unwrap()
            .mtbf_hours
        };
        assert_eq!(m(256.0, 0.02).round(), 20.0);
        assert!((m(512.0, 0.08) - 2.44).abs() < 0.01);
    }

    #[test]
    fn checkpoint_interval_adds_half_an_interval_per_failure() {
        let base = what_if(&example(40.0)).unwrap();
        let with = what_if(&WhatIfInput {
            checkpoint_interval_min: Some(60.0),
            ..example(40.0)
        })
        .unwrap();
        // 625 failures × 30 min = 312.5 h.
        assert!(
            (with.lost_work_days - 312.5 / 24.0).abs() < 1e-6,
            "{with:?}"
        );
        assert!((with.total_days - base.total_days - with.lost_work_days).abs() < 1e-9);
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = what_if(&WhatIfInput {
            instances: 0.0,
            ..example(40.0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("--instances"), "{e}");
        let e = what_if(&WhatIfInput {
            failure_rate_pct: -1.0,
            ..example(40.0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("--failure-rate"), "{e}");
        let e = what_if(&WhatIfInput {
            gpu_hours: f64::NAN,
            ..example(40.0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("--gpu-hours"), "{e}");
        let e = what_if(&WhatIfInput {
            checkpoint_interval_min: Some(-5.0),
            ..example(40.0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("--checkpoint-interval-min"), "{e}");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn incident(
        id: u64,
        fault: i64,
        stamps: [i64; 5],
        from_step: u64,
        fault_step: u64,
    ) -> pb::Incident {
        pb::Incident {
            id,
            job_id: "j".into(),
            fault_unix_ms: fault,
            detected_unix_ms: stamps[0],
            fenced_unix_ms: stamps[1],
            replaced_unix_ms: stamps[2],
            relaunched_unix_ms: stamps[3],
            resumed_unix_ms: stamps[4],
            open: stamps[4] == 0,
            resumed_from_step: from_step,
            fault_step,
            ..Default::default()
        }
    }

    #[test]
    fn summary_splits_phases_like_the_published_table() {
        let a = incident(1, 1_000, [2_000, 2_500, 4_000, 6_000, 11_000], 10, 15);
        let b = incident(2, 100_000, [103_000, 0, 0, 104_000, 106_000], 20, 20);
        let open = incident(3, 200_000, [201_000, 0, 0, 0, 0], 0, 0);
        let p = phases(&a).unwrap();
        assert_eq!(
            (
                p.detect_s,
                p.fence_s,
                p.replace_s,
                p.bootstrap_s,
                p.resume_s,
                p.total_s
            ),
            (1.0, 0.5, 1.5, 2.0, 5.0, 10.0)
        );
        // A restart in place has no fence or replacement stamps: those phases take no time.
        let q = phases(&b).unwrap();
        assert_eq!(
            (q.fence_s, q.replace_s, q.bootstrap_s, q.resume_s),
            (0.0, 0.0, 1.0, 2.0)
        );
        assert!(phases(&open).is_none());
        let s = recovery_summary(&[a, b, open]);
        assert_eq!((s.incidents, s.not_recovered), (2, 1));
        assert_eq!(s.detect_s, Some(Percentiles { p50: 1.0, p90: 3.0 }));
        assert_eq!(s.replace_s, Some(Percentiles { p50: 0.0, p90: 2.0 }));
        assert_eq!(s.resume_s, Some(Percentiles { p50: 3.0, p90: 7.0 }));
        assert_eq!(
            s.total_s,
            Some(Percentiles {
                p50: 6.0,
                p90: 10.0
            })
        );
        assert!((s.mean_downtime_min.unwrap() - 8.0 / 60.0).abs() < 1e-9);
        assert_eq!(recovery_summary(&[]).total_s, None);
    }

    #[test]
    fn ettr_counts_downtime_and_redone_work() {
        // 100 s of wall time, one 20 s outage, 10 steps redone out of 90 executed.
        let job = pb::Job {
            job_id: "j".into(),
            step: 80,
            submitted_unix_ms: 0,
            finished_unix_ms: 100_000,
            ..Default::default()
        };
        let i = incident(1, 40_000, [41_000, 42_000, 43_000, 50_000, 60_000], 30, 40);
        let other = pb::Incident {
            job_id: "other".into(),
            ..i.clone()
        };
        let e = ettr(&job, &[i, other], 999_999);
        assert_eq!(e.wall_s, 100.0);
        assert_eq!(e.downtime_s, 20.0);
        assert_eq!(e.lost_steps, 10);
        assert!((e.lost_work_s - 80.0 * 10.0 / 90.0).abs() < 1e-9, "{e:?}");
        assert!((e.ettr - (80.0 - 80.0 * 10.0 / 90.0) / 100.0).abs() < 1e-9);
        // No incidents: everything is productive; a running job counts up to now.
        let running = pb::Job {
            finished_unix_ms: 0,
            ..job
        };
        let e = ettr(&running, &[], 50_000);
        assert_eq!((e.wall_s, e.ettr), (50.0, 1.0));
    }
}
