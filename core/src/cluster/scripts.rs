//! Lifecycle scripts, decided in the core: which scripts a node runs (bootstrap and deep check
//! at join, the deep check again before it replaces a failed node, or on an operator's request),
//! one `RunScript` at a time, and what their results mean for the node and for the job waiting
//! on it. Pure like the rest of [`super`]: results and deadlines come in with `now`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Cluster, Command, Reply, Work};
use crate::error::CoreError;
use crate::incident::IncidentEvent;
use crate::job::{JobEffect, JobEvent};
use crate::node::{FaultCause, NodeEvent, NodeState};
use crate::protocol::{AgentCommand, CommandResult, RunScript};
use crate::{JobId, NodeId, UnixMillis};

/// How much longer than the script timeout the coordinator waits for a result that the agent
/// should have sent (the agent enforces the timeout itself; this catches a lost result).
const RESULT_SLACK_MS: i64 = 5_000;

/// At most this much of a script's output goes into a fence reason (the full tail is kept in
/// the node's last check).
const REASON_OUTPUT_CHARS: usize = 600;

/// Why a node runs scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckPurpose {
    /// A new or repaired node: bootstrap, then the deep check; → Ready or Fenced.
    Join,
    /// A ready node about to take over `rank` of `job_id`: the deep check again.
    Replacement {
        /// The job waiting for the node.
        job_id: JobId,
        /// The rank the node is held for while the check runs; no other candidate gets it.
        rank: usize,
    },
    /// `holdfast check NODE`: the deep check, reported to request `request`; the node's
    /// state is left alone.
    Operator {
        /// The operator call the report answers.
        request: u64,
    },
    /// A node drained by a health finding, idle: the remediation script, then the deep check;
    /// → back in service (drain lifted) on success, → Fenced on failure.
    Remediation,
}

impl CheckPurpose {
    /// The lower-case name: a report's `purpose`, and `HOLDFAST_CHECK_PURPOSE` for the scripts.
    pub fn name(&self) -> &'static str {
        match self {
            CheckPurpose::Join => "join",
            CheckPurpose::Replacement { .. } => "replacement",
            CheckPurpose::Operator { .. } => "operator",
            CheckPurpose::Remediation => "remediation",
        }
    }
}

/// One script's outcome, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptOutcome {
    /// The script's name inside the agents' `script_dir`.
    pub script: String,
    /// It exited 0 within the timeout.
    pub ok: bool,
    /// Its exit code, when it exited (none when it was killed, never started, or no result
    /// came).
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// Tail of the combined stdout/stderr.
    pub output: String,
    /// What happened, in a line: the agent's, or why the coordinator gave up on the script.
    pub message: String,
}

/// The scripts of one run, kept on the node as its last check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Why the scripts ran, as a [`CheckPurpose::name`].
    pub purpose: String,
    /// Every script ran and passed.
    pub ok: bool,
    /// Each script's outcome, in run order; the run stops at the first failure.
    pub scripts: Vec<ScriptOutcome>,
    /// When the run began (coordinator clock).
    pub started_at: UnixMillis,
    /// How long the whole run took.
    pub duration_ms: u64,
}

impl CheckReport {
    /// The first failure in a line (its message ends with the script's last output line),
    /// then the output before that line, cut to its end: what a fence reason shows.
    fn failure_reason(&self) -> String {
        let Some(failed) = self.scripts.iter().find(|s| !s.ok) else {
            return "check failed".into();
        };
        let lines: Vec<&str> = failed
            .output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let shown = match lines.split_last() {
            Some((last, rest)) if failed.message.ends_with(last) => rest,
            _ => &lines[..],
        };
        if shown.is_empty() {
            return failed.message.clone();
        }
        let before_last = shown.join(" / ");
        let start = before_last
            .char_indices()
            .rev()
            .nth(REASON_OUTPUT_CHARS)
            .map_or(0, |(i, _)| i);
        format!("{} | output: {}", failed.message, &before_last[start..])
    }
}

/// Scripts a node is running now, one `RunScript` in flight at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRun {
    /// Why the node runs them: decides what the outcome does to the node and the job.
    pub purpose: CheckPurpose,
    /// The script in flight.
    pub current: String,
    /// The `RunScript` id of the script in flight (`<node>/script-<n>`): a result with any
    /// other id is stale and ignored. Empty before the first is sent.
    pub command_id: String,
    /// No result by then counts as a failure.
    pub deadline: UnixMillis,
    /// Scripts still to run after `current`, in order; a failure ends the run without them.
    pub remaining: VecDeque<String>,
    /// For a join: how many of the first scripts are the bootstrap (the node moves from
    /// Bootstrapping to Checking after them).
    pub bootstrap_scripts: usize,
    /// Outcomes of the scripts done so far; they become the report.
    pub results: Vec<ScriptOutcome>,
    /// When the run began; the report's duration counts from it.
    pub started_at: UnixMillis,
}

impl Cluster {
    /// Bootstrap and deep check of a node that just joined (it is in Bootstrapping).
    pub(super) fn start_join_scripts(
        &mut self,
        node_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let mut scripts: VecDeque<String> = VecDeque::new();
        if !self.config.bootstrap_script.is_empty() {
            scripts.push_back(self.config.bootstrap_script.clone());
        }
        let bootstrap_scripts = scripts.len();
        scripts.extend(self.config.check_scripts.iter().cloned());
        if bootstrap_scripts == 0 {
            self.node_event(node_id, NodeEvent::Bootstrapped, now, fx);
        }
        self.start_scripts(
            node_id,
            CheckPurpose::Join,
            scripts,
            bootstrap_scripts,
            now,
            fx,
        );
    }

    /// Remediation of drained nodes that hold no job (`remediation_script`): the script, then
    /// the deep checks.
    pub(super) fn start_remediations(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        if self.config.remediation_script.is_empty() {
            return;
        }
        let idle: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.drained.is_some() && n.state.is_ready())
            .filter(|n| n.link.is_connected() && n.script_run.is_none())
            .map(|n| n.id.clone())
            .collect();
        for node_id in idle {
            let mut scripts = VecDeque::from([self.config.remediation_script.clone()]);
            scripts.extend(self.config.check_scripts.iter().cloned());
            fx.push(self.log_event(
                &node_id,
                "",
                format!(
                    "node {node_id}: running {} for its drain",
                    self.config.remediation_script
                ),
                now,
            ));
            self.start_scripts(&node_id, CheckPurpose::Remediation, scripts, 0, now, fx);
        }
    }

    /// Starts a run of `scripts` on a node; an empty list finishes at once, successfully.
    fn start_scripts(
        &mut self,
        node_id: &str,
        purpose: CheckPurpose,
        mut scripts: VecDeque<String>,
        bootstrap_scripts: usize,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let first = scripts.pop_front();
        let run = ScriptRun {
            purpose,
            current: String::new(),
            command_id: String::new(),
            deadline: now,
            remaining: scripts,
            bootstrap_scripts,
            results: Vec::new(),
            started_at: now,
        };
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.script_run = Some(Box::new(run));
        }
        match first {
            Some(script) => self.send_script(node_id, script, now, fx),
            None => self.finish_scripts(node_id, now, fx),
        }
    }

    fn send_script(
        &mut self,
        node_id: &str,
        script: String,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        self.next_command += 1;
        let command_id = format!("{node_id}/script-{}", self.next_command);
        let timeout_ms = self.config.script_timeout_ms;
        let term = self.term;
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let Some(run) = node.script_run.as_mut() else {
            return;
        };
        run.current = script.clone();
        run.command_id = command_id.clone();
        run.deadline = now + timeout_ms as i64 + RESULT_SLACK_MS;
        let purpose = run.purpose.name();
        fx.push(Command::Send {
            node: node_id.into(),
            command: AgentCommand::RunScript(RunScript {
                command_id,
                script: script.clone(),
                args: Vec::new(),
                timeout_ms,
                env: [("HOLDFAST_CHECK_PURPOSE".to_string(), purpose.to_string())].into(),
                term,
            }),
        });
        fx.push(self.log_event(
            node_id,
            "",
            format!("node {node_id}: running {script} ({purpose})"),
            now,
        ));
    }

    /// A `CommandResult` arrived from a node's agent.
    pub(crate) fn command_result(
        &mut self,
        node_id: &str,
        result: CommandResult,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        if result.command_id == "on-fence" {
            // Only a fenced node was sent a fence (and runs `on-fence`); anything else claiming
            // the result is noise, and whatever is logged is cut to a line's worth.
            if !self.is_fenced(node_id) {
                tracing::debug!(
                    node = node_id,
                    "on-fence result from an unfenced node ignored"
                );
                return fx;
            }
            let output = result.output.trim();
            fx.push(self.log_event(
                node_id,
                "",
                format!(
                    "node {node_id}: {}{}",
                    crate::limits::truncated(&result.message, crate::limits::MAX_LOGGED),
                    if output.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " | output: {}",
                            crate::limits::truncated(output, crate::limits::MAX_LOGGED)
                        )
                    }
                ),
                now,
            ));
            return fx;
        }
        let matches = self
            .nodes
            .get(node_id)
            .and_then(|n| n.script_run.as_deref())
            .is_some_and(|r| r.command_id == result.command_id);
        if !matches {
            tracing::debug!(
                node = node_id,
                command = result.command_id,
                "result of no pending command ignored"
            );
            return fx;
        }
        self.record_outcome(
            node_id,
            ScriptOutcome {
                script: String::new(),
                ok: result.ok,
                exit_code: result.exit_code,
                duration_ms: result.duration_ms,
                output: result.output,
                message: result.message,
            },
            now,
            &mut fx,
        );
        fx
    }

    /// Files the outcome of the script in flight and sends the next one, or finishes the run.
    fn record_outcome(
        &mut self,
        node_id: &str,
        mut outcome: ScriptOutcome,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let Some(run) = self.script_run_mut(node_id) else {
            return;
        };
        outcome.script = run.current.clone();
        let ok = outcome.ok;
        run.results.push(outcome);
        let bootstrapped =
            run.purpose == CheckPurpose::Join && ok && run.results.len() == run.bootstrap_scripts;
        let next = if ok { run.remaining.pop_front() } else { None };
        if bootstrapped {
            self.node_event(node_id, NodeEvent::Bootstrapped, now, fx);
        }
        match next {
            Some(script) => self.send_script(node_id, script, now, fx),
            None => self.finish_scripts(node_id, now, fx),
        }
    }

    /// The run is over (all passed, or one failed): keep the report on the node and act on it.
    fn finish_scripts(&mut self, node_id: &str, now: UnixMillis, fx: &mut Vec<Command>) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let Some(run) = node.script_run.as_deref().cloned() else {
            return;
        };
        let report = CheckReport {
            purpose: run.purpose.name().into(),
            ok: run.results.iter().all(|r| r.ok) && run.remaining.is_empty(),
            scripts: run.results,
            started_at: run.started_at,
            duration_ms: (now - run.started_at).max(0) as u64,
        };
        node.last_check = Some(report.clone());
        let summary = format!(
            "node {node_id}: {} check {} in {:.1} s",
            report.purpose,
            if report.ok { "passed" } else { "failed" },
            report.duration_ms as f64 / 1000.0
        );
        fx.push(self.log_event(node_id, "", summary, now));
        if let CheckPurpose::Replacement { job_id, rank } = &run.purpose {
            if report.ok {
                // The run stays on the node until it is allocated, so the ready moment in
                // between cannot hand it (or its rank) to anyone else.
                self.node_event(node_id, NodeEvent::CheckPassed, now, fx);
                self.node_event(
                    node_id,
                    NodeEvent::Allocate {
                        job_id: job_id.clone(),
                    },
                    now,
                    fx,
                );
                self.take_script_run(node_id);
                let allocated = matches!(
                    self.nodes.get(node_id).map(|n| &n.state),
                    Some(NodeState::Allocated { job_id: j }) if j == job_id
                );
                if allocated {
                    let event = JobEvent::ReplacementFound {
                        rank: *rank,
                        node: node_id.into(),
                    };
                    self.drive(job_id, event, now, fx);
                }
                self.defer(Work::FindReplacements);
                return;
            }
        }
        self.take_script_run(node_id);
        match run.purpose {
            CheckPurpose::Operator { request } => fx.push(Command::Reply {
                request,
                reply: Ok(Reply::Check {
                    node_id: node_id.into(),
                    report,
                }),
            }),
            CheckPurpose::Join if report.ok => {
                self.node_event(node_id, NodeEvent::CheckPassed, now, fx)
            }
            CheckPurpose::Join => self.reject_node(node_id, None, &report, now, fx),
            CheckPurpose::Remediation if report.ok => {
                if let Some(node) = self.nodes.get_mut(node_id) {
                    node.drained = None;
                    node.findings.clear();
                }
                self.touch_node(node_id);
                fx.push(self.log_event(
                    node_id,
                    "",
                    format!("node {node_id} remediated and checked: back in service"),
                    now,
                ));
                self.defer(Work::FindReplacements);
            }
            CheckPurpose::Remediation => self.reject_node(node_id, None, &report, now, fx),
            CheckPurpose::Replacement { job_id, .. } => {
                self.reject_node(node_id, Some(&job_id), &report, now, fx);
                self.defer(Work::FindReplacements);
            }
        }
    }

    /// The node's script run in flight, if any.
    fn script_run_mut(&mut self, node_id: &str) -> Option<&mut ScriptRun> {
        self.nodes.get_mut(node_id)?.script_run.as_deref_mut()
    }

    /// Ends the node's script run, if any, and returns it.
    fn take_script_run(&mut self, node_id: &str) -> Option<ScriptRun> {
        self.nodes
            .get_mut(node_id)?
            .script_run
            .take()
            .map(|run| *run)
    }

    /// A node failed its check: fenced with the script's output in the reason.
    fn reject_node(
        &mut self,
        node_id: &str,
        job_id: Option<&str>,
        report: &CheckReport,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let reason = report.failure_reason();
        // The node itself is always kept out (it costs no job anything), but the provider's
        // fence of its host (terminate, drain, power off) goes through the breaker's share:
        // a stream of hosts failing their checks, or of fresh node ids that a rogue client
        // makes fail, must not turn into terminating hosts without bound.
        let host_fence = self.share_allows(node_id, now, fx);
        self.node_event(
            node_id,
            NodeEvent::Fence(FaultCause::CheckFailed(reason.clone())),
            now,
            fx,
        );
        if host_fence {
            self.fence_host(node_id, &reason, fx);
        }
        if self
            .nodes
            .get(node_id)
            .is_some_and(|n| n.link.is_connected())
        {
            fx.push(Command::Send {
                node: node_id.into(),
                command: AgentCommand::Fence {
                    reason: format!("failed bootstrap/health check: {reason}"),
                    term: self.term,
                },
            });
        }
        if let Some(job_id) = job_id {
            let event = IncidentEvent::CandidateRejected {
                node: node_id.into(),
                reason: reason.clone(),
            };
            let mut queue = VecDeque::new();
            self.apply_job_effect(job_id, JobEffect::Incident(event), now, fx, &mut queue);
            self.drive(
                job_id,
                JobEvent::Note {
                    message: format!(
                        "replacement candidate {node_id} failed its check; trying the next"
                    ),
                },
                now,
                fx,
            );
            fx.push(self.log_event(
                node_id,
                job_id,
                format!("replacement candidate {node_id} rejected: {reason}"),
                now,
            ));
        }
    }

    /// Scripts of a node that went away are abandoned: a replacement rank is freed for the
    /// next candidate, an operator gets a failed report.
    pub(super) fn abort_scripts(
        &mut self,
        node_id: &str,
        why: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        let Some(run) = self.take_script_run(node_id) else {
            return;
        };
        if let CheckPurpose::Operator { request } = run.purpose {
            let mut scripts = run.results;
            scripts.push(ScriptOutcome {
                script: run.current,
                ok: false,
                exit_code: None,
                duration_ms: (now - run.started_at).max(0) as u64,
                output: String::new(),
                message: why.to_string(),
            });
            let report = CheckReport {
                purpose: "operator".into(),
                ok: false,
                scripts,
                started_at: run.started_at,
                duration_ms: (now - run.started_at).max(0) as u64,
            };
            fx.push(Command::Reply {
                request,
                reply: Ok(Reply::Check {
                    node_id: node_id.into(),
                    report,
                }),
            });
        }
    }

    /// Runs that passed their deadline without a result fail.
    pub(super) fn expire_scripts(&mut self, now: UnixMillis, fx: &mut Vec<Command>) {
        let overdue: Vec<(NodeId, String, i64)> = self
            .nodes
            .values()
            .filter_map(|n| n.script_run.as_deref().map(|r| (n, r)))
            .filter(|(_, r)| !r.command_id.is_empty() && now >= r.deadline)
            .map(|(n, r)| (n.id.clone(), r.current.clone(), r.deadline))
            .collect();
        for (node_id, script, deadline) in overdue {
            let waited = self.config.script_timeout_ms as i64 + RESULT_SLACK_MS;
            let outcome = ScriptOutcome {
                script: script.clone(),
                ok: false,
                exit_code: None,
                duration_ms: waited.max(0) as u64,
                output: String::new(),
                message: format!("{script}: no result from the agent within {} ms", waited),
            };
            tracing::debug!(node = node_id.as_str(), deadline, "script result overdue");
            self.record_outcome(&node_id, outcome, now, fx);
        }
    }

    /// `holdfast check NODE`: runs the deep check now; the report comes back as
    /// [`Command::Reply`] to `request`.
    pub(crate) fn check_node(
        &mut self,
        node_id: &str,
        request: u64,
        now: UnixMillis,
    ) -> Result<Vec<Command>, CoreError> {
        let node = self.connected_node(node_id)?;
        if let Some(run) = &node.script_run {
            return Err(CoreError::NodeBusy(format!(
                "node {node_id} is already running {} ({} check)",
                run.current,
                run.purpose.name()
            )));
        }
        if self.config.check_scripts.is_empty() {
            return Err(CoreError::NodeBusy(
                "no check_scripts are configured on the coordinator".into(),
            ));
        }
        let scripts = self.config.check_scripts.iter().cloned().collect();
        let mut fx = Vec::new();
        self.start_scripts(
            node_id,
            CheckPurpose::Operator { request },
            scripts,
            0,
            now,
            &mut fx,
        );
        Ok(fx)
    }

    /// Moves a ready node into its replacement check for `rank` of `job_id`.
    pub(super) fn start_replacement_check(
        &mut self,
        job_id: &str,
        rank: usize,
        node_id: &str,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        self.node_event(node_id, NodeEvent::Recheck, now, fx);
        let scripts = self.config.check_scripts.iter().cloned().collect();
        let purpose = CheckPurpose::Replacement {
            job_id: job_id.into(),
            rank,
        };
        self.start_scripts(node_id, purpose, scripts, 0, now, fx);
    }

    /// Ranks of `job_id` that a candidate under check is reserved for.
    pub(super) fn ranks_under_check(&self, job_id: &str) -> Vec<usize> {
        self.nodes
            .values()
            .filter_map(|n| match n.script_run.as_deref().map(|r| &r.purpose) {
                Some(CheckPurpose::Replacement { job_id: j, rank }) if j == job_id => Some(*rank),
                _ => None,
            })
            .collect()
    }

    /// True when taking a replacement means checking it first.
    pub(super) fn checks_replacements(&self) -> bool {
        self.config.check_replacements && !self.config.check_scripts.is_empty()
    }
}

#[cfg(test)]
#[path = "scripts_tests.rs"]
mod tests;
