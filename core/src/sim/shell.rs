//! The coordinator's side: the core stepped with what arrives, the shell that carries out its
//! commands (streams, checkpoint resolution, the provider, replies), and the coordinator's own
//! faults (a pause, a restart).

use super::*;

impl Sim {
    /// `message` reaches the agent of `node` on its stream `conn` at `at`.
    pub(super) fn send_to_agent(
        &mut self,
        at: UnixMillis,
        node: String,
        conn: u64,
        message: ToAgent,
    ) {
        self.push(
            at,
            SimEvent::ToAgent {
                node,
                conn,
                message,
            },
        );
    }

    // ----- the coordinator ---------------------------------------------------------------------

    /// Steps the core with `input` now and carries out its commands.
    pub(super) fn step(&mut self, input: Input) {
        self.stats.inputs += 1;
        let started = std::time::Instant::now();
        let fx = self.cluster.step(input, self.now);
        self.stats.core_ns += started.elapsed().as_nanos() as u64;
        self.carry_out(fx);
        if self.checks.every_input {
            self.check_state();
        }
    }

    /// An input reaches the coordinator process: lost if its stream belongs to an older
    /// incarnation or the node is cut off, held while the coordinator is paused.
    pub(super) fn coordinator_input(&mut self, origin: Origin, input: Input) {
        let arrives = match origin {
            Origin::Shell(epoch) => epoch == self.epoch,
            Origin::Stream(conn) => self.streams.get(&conn).is_some_and(|s| {
                s.epoch == self.epoch && !self.agents.get(&s.node).is_some_and(|a| a.cut)
            }),
        };
        if !arrives {
            self.stats.lost_to_coordinator += 1;
            return;
        }
        if self.paused_until.is_some() {
            self.held.push((origin, input));
            return;
        }
        self.deliver(origin, input);
    }

    /// The shell reads an input that arrived and steps the core with it.
    pub(super) fn deliver(&mut self, origin: Origin, input: Input) {
        let conn = match origin {
            Origin::Shell(epoch) => {
                if epoch == self.epoch {
                    self.step(input);
                }
                return;
            }
            Origin::Stream(conn) => conn,
        };
        let Some(stream) = self.streams.get_mut(&conn) else {
            return;
        };
        if !stream.open || stream.epoch != self.epoch {
            self.stats.lost_to_coordinator += 1;
            return;
        }
        match input {
            Input::Disconnected { node, conn } => {
                // The shell's reader sees the stream end.
                stream.open = false;
                if self.server.get(&node) == Some(&conn) {
                    self.server.remove(&node);
                }
                self.step(Input::Disconnected { node, conn });
            }
            Input::Hello {
                request,
                conn,
                hello,
            } => {
                self.pending_hellos.insert(request, conn);
                self.step(Input::Hello {
                    request,
                    conn,
                    hello,
                });
            }
            other => self.step(other),
        }
    }

    pub(super) fn coordinator_wakes(&mut self) {
        if self.paused_until.is_none_or(|t| t > self.now) {
            return;
        }
        self.paused_until = None;
        // The ticker's missed tick fires first; then the streams are read.
        self.last_tick_at = Some(self.now);
        self.stats.ticks += 1;
        self.step(Input::Tick);
        for (origin, input) in std::mem::take(&mut self.held) {
            self.deliver(origin, input);
        }
        self.after_tick();
    }

    /// Carries out the core's commands in order, as the coordinator's shell does.
    pub(super) fn carry_out(&mut self, fx: Vec<Command>) {
        let later = self.now + self.latency_ms;
        let shell = Origin::Shell(self.epoch);
        for command in fx {
            match command {
                Command::Send { node, command } => match self.server.get(&node) {
                    Some(&conn) => {
                        let message = ToAgent::Command(Box::new(command));
                        self.send_to_agent(later, node.into(), conn, message);
                    }
                    None => self.stats.lost_to_agents += 1,
                },
                Command::Disconnect { node, .. } => {
                    if let Some(conn) = self.server.remove(&node) {
                        if let Some(stream) = self.streams.get_mut(&conn) {
                            stream.open = false;
                        }
                        let at = self.now;
                        self.push(
                            at,
                            SimEvent::ToCoordinator {
                                origin: shell,
                                input: Input::Disconnected {
                                    node: node.clone(),
                                    conn,
                                },
                            },
                        );
                        self.send_to_agent(later, node.into(), conn, ToAgent::Closed);
                    }
                }
                Command::ResolveCheckpoint {
                    job_id,
                    uri,
                    fenced,
                    ..
                } => {
                    let (result, skipped) = self.resolve(&job_id, &uri, &fenced);
                    self.push(
                        later,
                        SimEvent::ToCoordinator {
                            origin: shell,
                            input: Input::CheckpointResolved {
                                job_id,
                                result,
                                skipped,
                            },
                        },
                    );
                }
                Command::Publish(event) => {
                    if event.kind == EventKind::Progress {
                        self.stats.progress_events += 1;
                    } else if self.keep_events {
                        self.events.push(event);
                    }
                }
                Command::Provision { job_id, count, .. } => self.push(
                    later,
                    SimEvent::ToCoordinator {
                        origin: shell,
                        input: Input::ProvisionResult {
                            job_id,
                            count,
                            result: Ok(Vec::new()),
                        },
                    },
                ),
                Command::FenceHost { node, .. } => self.push(
                    later,
                    SimEvent::ToCoordinator {
                        origin: shell,
                        input: Input::FenceHostResult {
                            node,
                            result: Ok("sim provider fenced it".into()),
                        },
                    },
                ),
                Command::Archive { jobs, incidents } => {
                    (self.archived.0).extend(jobs.into_iter().map(|j| j.id.to_string()));
                    (self.archived.1).extend(incidents.into_iter().map(|i| i.id));
                    self.push(
                        later,
                        SimEvent::ToCoordinator {
                            origin: shell,
                            input: Input::Archived { result: Ok(()) },
                        },
                    );
                }
                Command::Reply { request, reply } => match self.pending_hellos.remove(&request) {
                    Some(conn) => self.answer_hello(conn, reply),
                    None => {
                        self.replies.insert(request, reply);
                    }
                },
            }
        }
    }

    /// The shell answers a hello: registers the stream and sends the welcome, or closes it.
    pub(super) fn answer_hello(&mut self, conn: u64, reply: Result<Reply, CoreError>) {
        let Some(stream) = self.streams.get_mut(&conn) else {
            return;
        };
        let node = stream.node.clone();
        let message = match reply {
            Ok(Reply::Welcome(welcome)) => {
                self.server.insert(node.clone().into(), conn);
                ToAgent::Welcome {
                    term: welcome.term,
                    heartbeat_interval_ms: welcome.heartbeat_interval_ms,
                }
            }
            _ => {
                stream.open = false;
                ToAgent::Refused
            }
        };
        let at = self.now + self.latency_ms;
        self.send_to_agent(at, node, conn, message);
    }

    /// The newest checkpoint not written by a fenced generation after its fence.
    pub(super) fn resolve(
        &self,
        job_id: &str,
        uri: &str,
        fenced: &[FencedGeneration],
    ) -> (Result<Option<Checkpoint>, String>, Vec<String>) {
        let mut skipped = Vec::new();
        if uri.is_empty() {
            return (Ok(None), skipped);
        }
        if self.store_down {
            return (
                Err("sim: the checkpoint store is unreachable".into()),
                skipped,
            );
        }
        let Some(all) = self.checkpoints.get(job_id) else {
            return (Ok(None), skipped);
        };
        let zombie = |c: &SimCheckpoint| {
            fenced
                .iter()
                .any(|f| f.generation == c.generation && c.written_at > f.fenced_at)
        };
        for c in all.values().rev().filter(|c| !zombie(c)) {
            if let Some(why) = &c.damaged {
                skipped.push(format!("step-{}: {why}", c.step));
                continue;
            }
            let found = Checkpoint {
                step: c.step,
                uri: c.uri.clone(),
                generation: Some(c.generation),
            };
            return (Ok(Some(found)), skipped);
        }
        (Ok(None), skipped)
    }

    /// The files of `job_id`'s checkpoint at `step` no longer match its manifest (`why`: a
    /// truncated or corrupted file): the resolver passes it over. False when there is none.
    pub fn damage_checkpoint(&mut self, job_id: &str, step: u64, why: &str) -> bool {
        let Some(c) = self
            .checkpoints
            .get_mut(job_id)
            .and_then(|all| all.get_mut(&step))
        else {
            return false;
        };
        c.damaged = Some(why.to_string());
        true
    }

    // ----- coordinator faults -----------------------------------------------------------------

    /// The coordinator stops for `ms`: no ticks, no messages handled. When it wakes the missed
    /// tick fires first, then everything that arrived meanwhile, in order.
    pub fn pause_coordinator(&mut self, ms: i64) {
        let until = self.now + ms;
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        self.push(until, SimEvent::CoordinatorWakes);
    }

    /// The coordinator restarts: its state goes through [`Cluster::to_records`] and
    /// [`Cluster::restore`], every stream closes, held and in-flight inputs are lost, and the
    /// agents reconnect after their reconnect delay.
    pub fn restart_coordinator(&mut self) {
        let records = self
            .cluster
            .to_records()
            .expect("sim: the state cannot be stored");
        let (cluster, fx) = Cluster::restore(self.config.clone(), &records, self.now)
            .expect("sim: the stored state cannot be restored")
            .expect("sim: the stored state is empty");
        self.cluster = cluster;
        self.epoch += 1;
        self.paused_until = None;
        self.held.clear();
        self.server.clear();
        self.pending_hellos.clear();
        let later = self.now + self.latency_ms;
        let open: Vec<(u64, String)> = self
            .streams
            .iter_mut()
            .filter(|(_, s)| s.open)
            .map(|(c, s)| {
                s.open = false;
                (*c, s.node.clone())
            })
            .collect();
        for (conn, node) in open {
            self.send_to_agent(later, node, conn, ToAgent::Closed);
        }
        self.carry_out(fx);
        if self.checks.every_input {
            self.check_state();
        }
    }

    /// Makes checkpoint resolution fail (`true`) or work again.
    pub fn set_checkpoint_store_down(&mut self, down: bool) {
        self.store_down = down;
    }
}
