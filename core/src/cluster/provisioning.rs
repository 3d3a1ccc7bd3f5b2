//! Asking the replacement provider for hosts, decided in the core. With `provider = "exec"`,
//! a job that waits for more nodes than are ready asks for the difference once
//! ([`Command::Provision`]); the new hosts' agents register, bootstrap, are checked and taken
//! like any ready node. A fenced job node (and a candidate that failed its check) is handed to
//! the provider's `fence` ([`Command::FenceHost`]) to be terminated, drained or powered off.

use super::{Cluster, Command};
use crate::job::JobEvent;
use crate::UnixMillis;

impl Cluster {
    /// After a replacement search for `job_id` that left `unfilled` ranks without a node or a
    /// candidate: asks for the hosts not already asked for.
    pub(super) fn provision_for(
        &mut self,
        job_id: &str,
        unfilled: usize,
        now: UnixMillis,
        fx: &mut Vec<Command>,
    ) {
        if !self.config.provisions_hosts() {
            return;
        }
        let asked = self.provisioning.get(job_id).copied().unwrap_or(0);
        let more = (unfilled as u32).saturating_sub(asked);
        if more == 0 {
            return;
        }
        self.provisioning.insert(job_id.to_string(), asked + more);
        self.next_command += 1;
        fx.push(Command::Provision {
            request_id: self.next_command,
            job_id: job_id.into(),
            count: more,
        });
        fx.push(self.log_event(
            "",
            job_id,
            format!("asking the provider for {more} host(s) for {job_id}"),
            now,
        ));
    }

    /// A host nobody knew said hello: one host asked for has arrived.
    pub(super) fn provisioned_host_arrived(&mut self, node_id: &str) {
        if let Some((job_id, asked)) = self.provisioning.iter_mut().find(|(_, n)| **n > 0) {
            *asked -= 1;
            tracing::info!(
                job = job_id.as_str(),
                node = node_id,
                "a provisioned host registered"
            );
        }
        self.provisioning.retain(|_, n| *n > 0);
    }

    /// The provider answered a `Provision`.
    pub(crate) fn provision_result(
        &mut self,
        job_id: &str,
        count: u32,
        result: Result<Vec<String>, String>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let mut fx = Vec::new();
        match result {
            Ok(hosts) => fx.push(self.log_event(
                "",
                job_id,
                format!(
                    "provider started {} for {job_id}; waiting for their agents",
                    if hosts.is_empty() {
                        format!("{count} host(s)")
                    } else {
                        hosts.join(", ")
                    }
                ),
                now,
            )),
            Err(reason) => {
                if let Some(asked) = self.provisioning.get_mut(job_id) {
                    *asked = asked.saturating_sub(count);
                }
                self.drive(
                    job_id,
                    JobEvent::Note {
                        message: format!("the provider could not provision a host: {reason}"),
                    },
                    now,
                    &mut fx,
                );
                fx.push(self.log_event(
                    "",
                    job_id,
                    format!("provision for {job_id} failed: {reason}"),
                    now,
                ));
            }
        }
        fx
    }

    /// The provider answered a `FenceHost`.
    pub(crate) fn fence_host_result(
        &mut self,
        node_id: &str,
        result: Result<String, String>,
        now: UnixMillis,
    ) -> Vec<Command> {
        let message = match result {
            Ok(output) => format!(
                "provider fenced {node_id}{}",
                if output.is_empty() {
                    String::new()
                } else {
                    format!(": {output}")
                }
            ),
            Err(reason) => format!("provider could not fence {node_id}: {reason}"),
        };
        vec![self.log_event(node_id, "", message, now)]
    }

    /// Hands a fenced node to the provider's `fence`, when the provider has one.
    pub(super) fn fence_host(&self, node_id: &str, reason: &str, fx: &mut Vec<Command>) {
        if !self.config.provisions_hosts() {
            return;
        }
        let Some(node) = self.nodes.get(node_id) else {
            return;
        };
        fx.push(Command::FenceHost {
            node: node_id.into(),
            hostname: node.hostname.clone(),
            address: node.address.clone(),
            reason: reason.to_string(),
        });
    }
}
