//! Workers and the gangs they train in: a launch starts a worker, every rank of a generation
//! steps together while all of them run, reports progress, writes checkpoints, and exits 0 at
//! the job's last step.

use super::agent::{Worker, WorkerStatus};
use super::*;
use crate::protocol::{Launch, Progress, WorkerEvent, WorkerEventKind};

impl Sim {
    // ----- workers -----------------------------------------------------------------------------

    pub(super) fn start_worker(&mut self, node: &str, launch: &Launch) {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.join_generation(node, launch, pid, launch.resume_step);
    }

    /// An in-process restart: the node's running worker of the launch's job keeps its process
    /// and joins the new generation, whose gang goes on from the step the old one reached (no
    /// step lost). `false` when there is no such worker (the agent then starts one).
    pub(super) fn reform_worker(&mut self, node: &str, launch: &Launch) -> bool {
        let Some(worker) = self.agent(node).worker.clone() else {
            return false;
        };
        if worker.job_id != launch.job_id || worker.generation >= launch.generation {
            return false;
        }
        let reached =
            (self.gangs.get(&(worker.job_id.clone(), worker.generation))).map_or(0, |g| g.step);
        self.leave_gang(&worker);
        self.join_generation(node, launch, worker.pid, launch.resume_step.max(reached));
        // A hung, stopped or spinning process is kept like any (its agent cannot tell), but it
        // never takes the notice: it stays stuck and the group cannot re-form.
        if matches!(
            worker.status,
            WorkerStatus::Hung | WorkerStatus::Stopped | WorkerStatus::Spinning
        ) {
            if let Some(kept) = self.agent_mut(node).worker.as_mut() {
                kept.status = worker.status;
            }
        }
        true
    }

    fn join_generation(&mut self, node: &str, launch: &Launch, pid: u32, step: u64) {
        let delay = self.agent(node).options.start_delay_ms as i64;
        self.agent_mut(node).worker = Some(Worker {
            job_id: launch.job_id.clone(),
            generation: launch.generation,
            pid,
            rank: launch.node_rank,
            status: WorkerStatus::Starting,
        });
        let key = (launch.job_id.clone(), launch.generation);
        if !self.gangs.contains_key(&key) {
            self.gangs.insert(
                key.clone(),
                Gang {
                    nnodes: launch.nnodes,
                    step,
                    members: BTreeMap::new(),
                },
            );
            let at = self.now + self.sim_job(&launch.job_id).params.step_ms as i64;
            self.push(
                at,
                SimEvent::Gang {
                    job_id: key.0.clone(),
                    generation: key.1,
                },
            );
        }
        if let Some(gang) = self.gangs.get_mut(&key) {
            gang.step = gang.step.max(step);
            gang.members
                .insert(launch.node_rank, (node.to_string(), pid));
        }
        if delay == 0 {
            self.worker_started(node, pid);
        } else {
            let at = self.now + delay;
            self.push(
                at,
                SimEvent::WorkerStarted {
                    node: node.to_string(),
                    pid,
                },
            );
        }
    }

    pub(super) fn worker_started(&mut self, node: &str, pid: u32) {
        if !self.agent(node).up {
            return;
        }
        let again = || SimEvent::WorkerStarted {
            node: node.to_string(),
            pid,
        };
        if self.put_off_while_paused(node, again) {
            return;
        }
        let at = self.agent_clock(node);
        let agent = self.agent_mut(node);
        let Some(worker) = agent.worker.as_mut().filter(|w| w.pid == pid) else {
            return;
        };
        if worker.status != WorkerStatus::Starting {
            return;
        }
        worker.status = WorkerStatus::Running;
        let event = WorkerEvent {
            job_id: worker.job_id.clone(),
            generation: worker.generation,
            at,
            kind: WorkerEventKind::Started { pid },
        };
        self.agent_send(
            node,
            Input::Worker {
                node: node.into(),
                event,
            },
        );
    }

    /// The node's worker ends (if it has one) and the agent reports the exit.
    pub(super) fn end_worker(
        &mut self,
        node: &str,
        code: Option<i32>,
        signal: Option<i32>,
        stopped_by_agent: bool,
    ) {
        let at = self.agent_clock(node);
        let agent = self.agent_mut(node);
        let Some(worker) = agent.worker.take() else {
            return;
        };
        agent.last_worker = Some((worker.job_id.clone(), worker.generation, worker.pid));
        self.leave_gang(&worker);
        let event = WorkerEvent {
            job_id: worker.job_id,
            generation: worker.generation,
            at,
            kind: WorkerEventKind::Exited {
                code,
                signal,
                stopped_by_agent,
            },
        };
        self.agent_send(
            node,
            Input::Worker {
                node: node.into(),
                event,
            },
        );
    }

    pub(super) fn leave_gang(&mut self, worker: &Worker) {
        let key = (worker.job_id.clone(), worker.generation);
        if let Some(gang) = self.gangs.get_mut(&key) {
            if gang
                .members
                .get(&worker.rank)
                .is_some_and(|(_, pid)| *pid == worker.pid)
            {
                gang.members.remove(&worker.rank);
            }
        }
    }

    pub(super) fn sim_job(&self, job_id: &str) -> SimJob {
        self.jobs.get(job_id).copied().unwrap_or(SimJob {
            params: super::JobParams::default(),
            total_steps: 0,
        })
    }

    /// One step of a gang: taken when every rank's worker trains; then progress from every
    /// rank, a checkpoint when due, and the end at the job's last step.
    pub(super) fn gang_step(&mut self, job_id: &JobId, generation: Generation) {
        let now = self.now;
        let key = (job_id.clone(), generation);
        let Some(gang) = self.gangs.get(&key) else {
            return;
        };
        if gang.members.is_empty() {
            self.gangs.remove(&key);
            return;
        }
        let job = self.sim_job(job_id);
        let members: Vec<String> = gang.members.values().map(|(n, _)| n.clone()).collect();
        let whole = gang.members.len() == gang.nnodes as usize
            && gang.members.values().all(|(node, pid)| {
                self.agents.get(node).is_some_and(|a| {
                    a.up && a.paused(now).is_none()
                        && a.worker
                            .as_ref()
                            .is_some_and(|w| w.pid == *pid && w.status == WorkerStatus::Running)
                })
            });
        let mut interval = job.params.step_ms.max(1) as f64;
        if whole {
            let slowest = members
                .iter()
                .filter_map(|n| self.agents.get(n))
                .map(|a| a.slow)
                .fold(1.0, f64::max);
            interval *= slowest;
            let step = {
                let gang = self.gangs.get_mut(&key).expect("the gang was just read");
                gang.step += 1;
                gang.step
            };
            for node in &members {
                self.agent_send(
                    node,
                    Input::Progress {
                        node: node.clone().into(),
                        progress: Progress {
                            job_id: job_id.clone(),
                            generation,
                            step,
                            memory: Vec::new(),
                            state_fallback: String::new(),
                        },
                    },
                );
            }
            let every = job.params.checkpoint_every;
            if every > 0 && step % every == 0 {
                let uri = format!("sim://{job_id}/step-{step}");
                self.checkpoints
                    .entry(job_id.to_string())
                    .or_default()
                    .insert(
                        step,
                        SimCheckpoint {
                            step,
                            generation,
                            written_at: now,
                            uri,
                            damaged: None,
                        },
                    );
            }
            if job.total_steps > 0 && step >= job.total_steps {
                for node in &members {
                    self.end_worker(node, Some(0), None, false);
                }
                self.gangs.remove(&key);
                return;
            }
        }
        let at = now + interval.round() as i64;
        self.push(
            at,
            SimEvent::Gang {
                job_id: job_id.clone(),
                generation,
            },
        );
    }
}
