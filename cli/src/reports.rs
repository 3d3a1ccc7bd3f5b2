//! `holdfast report` and `holdfast what-if`: the numbers of [`holdfast_coordinator::report`],
//! printed for operators (a table, or JSON whose last line is one object).

use holdfast_coordinator::report::{self, Percentiles, RecoverySummary, WhatIf, WhatIfInput};
use holdfast_proto::v1 as pb;

use crate::client;

/// Flags of `holdfast what-if`.
#[derive(clap::Args, Debug, Clone)]
pub struct WhatIfArgs {
    /// Instances (hosts) in the cluster.
    #[arg(long)]
    pub instances: f64,
    /// GPUs per instance.
    #[arg(long)]
    pub gpus_per_instance: f64,
    /// GPU-hours the training needs without failures.
    #[arg(long)]
    pub gpu_hours: f64,
    /// Instance failure rate, percent per instance-hour (e.g. 0.05).
    #[arg(long)]
    pub failure_rate: f64,
    /// Downtime per failure, minutes. Without it, holdfast's measured mean downtime from the
    /// coordinator's recorded incidents is used.
    #[arg(long)]
    pub downtime_min: Option<f64>,
    /// Minutes between checkpoints: half of it per failure is added as redone work.
    #[arg(long)]
    pub checkpoint_interval_min: Option<f64>,
    /// Print JSON; the last line is {"compute_days", "days_lost", "total_days", "mtbf_hours"}.
    #[arg(long)]
    pub json: bool,
    /// Coordinator address (used only without --downtime-min).
    #[arg(long, env = "HOLDFAST_COORDINATOR", default_value = client::DEFAULT_COORDINATOR)]
    pub coordinator: String,
}

fn input(args: &WhatIfArgs, downtime_min: f64) -> WhatIfInput {
    WhatIfInput {
        instances: args.instances,
        gpus_per_instance: args.gpus_per_instance,
        gpu_hours: args.gpu_hours,
        failure_rate_pct: args.failure_rate,
        downtime_min,
        checkpoint_interval_min: args.checkpoint_interval_min,
    }
}

fn last_line(w: &WhatIf) -> serde_json::Value {
    serde_json::json!({
        "compute_days": w.compute_days,
        "days_lost": w.days_lost,
        "total_days": w.total_days,
        "mtbf_hours": w.mtbf_hours,
    })
}

/// A scenario of the what-if table.
struct Scenario {
    label: String,
    downtime_min: f64,
    result: WhatIf,
}

fn scenarios(args: &WhatIfArgs, first: (String, f64)) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for (label, downtime_min) in [
        first,
        (
            "published managed".to_string(),
            report::MANAGED_DOWNTIME_MIN,
        ),
        (
            "published self-managed".to_string(),
            report::SELF_MANAGED_DOWNTIME_MIN,
        ),
    ] {
        let result = report::what_if(&input(args, downtime_min))?;
        out.push(Scenario {
            label,
            downtime_min,
            result,
        });
    }
    Ok(out)
}

/// Runs `holdfast what-if`.
pub async fn what_if(args: WhatIfArgs) -> anyhow::Result<i32> {
    let (label, downtime_min, measured) = match args.downtime_min {
        Some(d) => ("given".to_string(), d, None),
        None => {
            let mut c = client::connect(&args.coordinator).await?;
            let incidents = client::incidents(&mut c, "").await?;
            let summary = report::recovery_summary(&incidents);
            let mean = summary
                .mean_downtime_min
                .ok_or(report::ReportError::NoMeasuredDowntime)?;
            (
                format!("holdfast measured ({} incidents)", summary.incidents),
                mean,
                Some(summary),
            )
        }
    };
    // Validate the given numbers before anything is printed.
    let main = report::what_if(&input(&args, downtime_min))?;
    let rows = scenarios(&args, (label, downtime_min))?;
    if args.json {
        let all: Vec<_> = rows
            .iter()
            .map(|s| serde_json::json!({"scenario": s.label, "downtime_min": s.downtime_min, "result": s.result}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"scenarios": all, "measured": measured})
        );
        println!("{}", last_line(&main));
    } else {
        print!("{}", what_if_table(&args, &rows));
    }
    Ok(0)
}

fn what_if_table(args: &WhatIfArgs, rows: &[Scenario]) -> String {
    let first = &rows[0].result;
    let mut out = format!(
        "{} instances × {} GPUs, {} GPU-hours, {} %/h per instance\n\
         compute time {:.1} days, cluster MTBF {:.1} h, {:.0} failures expected\n\n",
        args.instances,
        args.gpus_per_instance,
        args.gpu_hours,
        args.failure_rate,
        first.compute_days,
        first.mtbf_hours,
        first.failures
    );
    out.push_str(&format!(
        "{:<34} {:>13} {:>10} {:>11} {:>9}\n",
        "DOWNTIME PER FAILURE", "MIN/FAILURE", "DAYS LOST", "TOTAL DAYS", "OVERHEAD"
    ));
    for s in rows {
        out.push_str(&format!(
            "{:<34} {:>13.2} {:>10.2} {:>11.2} {:>8.2}%\n",
            s.label,
            s.downtime_min,
            s.result.days_lost,
            s.result.total_days,
            100.0 * s.result.days_lost / s.result.compute_days
        ));
    }
    match args.checkpoint_interval_min {
        Some(c) => out.push_str(&format!(
            "\nDays lost include {:.1} days of redone work: half the {c}-minute checkpoint interval per failure.\n",
            first.lost_work_days
        )),
        None => out.push_str(
            "\nWork lost since the last checkpoint is not counted (the published model ignores it); \
             pass --checkpoint-interval-min to add half an interval per failure.\n",
        ),
    }
    out
}

/// Runs `holdfast report`.
pub async fn report(coordinator: &str, job: Option<String>, json: bool) -> anyhow::Result<i32> {
    let mut c = client::connect(coordinator).await?;
    let incidents = client::incidents(&mut c, "").await?;
    let jobs = c
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("cannot list jobs: {}", s.message()))?
        .into_inner()
        .jobs;
    let job = match &job {
        Some(id) => Some(
            jobs.iter()
                .find(|j| &j.job_id == id)
                .ok_or_else(|| anyhow::anyhow!("--job: no job {id:?} on the coordinator"))?,
        ),
        None => jobs.iter().max_by_key(|j| j.submitted_unix_ms),
    };
    let summary = report::recovery_summary(&incidents);
    let now = holdfast_coordinator::now_ms();
    let ettr = job.map(|j| report::ettr(j, &incidents, now));
    let per_incident: Vec<_> = incidents.iter().filter_map(report::phases).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"recovery": summary, "incidents": per_incident, "job": ettr})
        );
    } else {
        print!("{}", recovery_table(&summary));
        if let Some(e) = &ettr {
            println!(
                "\njob {}: ETTR {:.1}% — wall {:.1} s, downtime {:.1} s, redone work {:.1} s ({} steps), productive {:.1} s",
                e.job_id,
                100.0 * e.ettr,
                e.wall_s,
                e.downtime_s,
                e.lost_work_s,
                e.lost_steps,
                e.productive_s
            );
        }
    }
    Ok(0)
}

/// MTTD / MTTR in the published managed-service table's shape, next to its 256-instance row.
pub fn recovery_table(s: &RecoverySummary) -> String {
    let cell = |p: Option<Percentiles>, f: fn(Percentiles) -> f64| {
        p.map_or("-".to_string(), |p| format!("{:.2}", f(p)))
    };
    let mut out = format!(
        "{:<32} {:>10} {:>11} {:>10} {:>10} {:>10}\n",
        "RECOVERY", "DETECT (s)", "REPLACE (s)", "RESUME (s)", "TOTAL (s)", "TOTAL (min)"
    );
    for (name, f) in [
        ("P50", (|p: Percentiles| p.p50) as fn(Percentiles) -> f64),
        ("P90", |p: Percentiles| p.p90),
    ] {
        out.push_str(&format!(
            "{:<32} {:>10} {:>11} {:>10} {:>10} {:>10}\n",
            format!("holdfast {name} ({} incidents)", s.incidents),
            cell(s.detect_s, f),
            cell(s.replace_s, f),
            cell(s.resume_s, f),
            cell(s.total_s, f),
            s.total_s
                .map_or("-".to_string(), |p| format!("{:.2}", f(p) / 60.0)),
        ));
    }
    out.push_str(&format!(
        "{:<32} {:>10} {:>11} {:>10} {:>10} {:>10}\n",
        "published managed P90 (256)", 89, 903, 1398, 2390, 39.8
    ));
    out.push_str(
        "detect = fault → detection (MTTD); replace = detection → every rank has a node (fence included);\n\
         resume = replaced → progress past the resumed step; total = fault → resumed (MTTR).\n",
    );
    if s.not_recovered > 0 {
        out.push_str(&format!(
            "{} incident(s) still open or abandoned are not counted.\n",
            s.not_recovered
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_if_table_shows_given_and_published_downtimes() {
        let args = WhatIfArgs {
            instances: 256.0,
            gpus_per_instance: 8.0,
            gpu_hours: 1e7,
            failure_rate: 0.05,
            downtime_min: Some(1.0),
            checkpoint_interval_min: None,
            json: false,
            coordinator: String::new(),
        };
        let rows = scenarios(&args, ("given".into(), 1.0)).unwrap();
        let t = what_if_table(&args, &rows);
        assert!(t.contains("220.81") && t.contains("324.98"), "{t}");
        assert!(
            t.contains("published managed") && t.contains("not counted"),
            "{t}"
        );
    }
}
