//! `JoinService`: a new agent trades a join token and a certificate signing request for its
//! node certificate (`Join`), and a joined one trades its current certificate for a new one
//! before it expires (`Renew`, see [`crate::pki`]). `Join` is served without a client
//! certificate — the agent has none yet — and only with `pki_dir` set, which itself needs TLS,
//! so a token never crosses the network in the clear; `Renew` needs the client certificate.

use holdfast_proto::v1 as pb;
use pb::join_service_server::JoinService;
use tonic::{Request, Response, Status};

use crate::pki::{JoinRefused, Pki};

/// The join endpoint of one coordinator.
#[derive(Debug, Clone)]
pub struct Joins {
    pki: Option<Pki>,
}

impl Joins {
    /// Joins into the PKI at `config.pki_dir`; none when it is empty.
    pub fn new(config: &holdfast_core::config::CoordinatorConfig) -> Joins {
        let dir = &config.pki_dir;
        Joins {
            pki: (!dir.as_os_str().is_empty())
                .then(|| Pki::new(dir).with_node_cert_lifetime(config.node_cert_lifetime_s)),
        }
    }

    fn pki(&self) -> Result<Pki, Status> {
        self.pki.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator takes no joins (no pki_dir: it was not bootstrapped)",
            )
        })
    }
}

/// What the agent is told, and the operator's log, for a refused join or renewal.
fn refusal(
    refused: JoinRefused,
    node_id: &str,
    token_id: &str,
    peer: Option<std::net::SocketAddr>,
) -> Status {
    let shown: String = node_id.chars().take(128).collect();
    tracing::warn!(node = %shown, token = %token_id, ?peer, "join refused: {refused}");
    match refused {
        JoinRefused::Token => Status::permission_denied(refused.to_string()),
        JoinRefused::Renewal(_) => Status::permission_denied(refused.to_string()),
        JoinRefused::NodeTaken(_) => Status::already_exists(refused.to_string()),
        JoinRefused::NodeId(_) | JoinRefused::Csr(_) => {
            Status::invalid_argument(refused.to_string())
        }
        JoinRefused::Pki(e) => {
            tracing::error!("join: {e}");
            Status::internal("the coordinator cannot read or write its pki directory")
        }
    }
}

#[tonic::async_trait]
impl JoinService for Joins {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let pki = self.pki()?;
        let peer = request.remote_addr();
        let req = request.into_inner();
        let node_id = req.node_id.clone();
        let token_id: String = req
            .token
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .take(16)
            .collect();
        let outcome = tokio::task::spawn_blocking(move || {
            pki.join(&req.token, &req.node_id, &req.csr_pem, crate::now_ms())
        })
        .await
        .map_err(|e| Status::internal(format!("join: {e}")))?;
        let (certificate_pem, ca_pem) =
            outcome.map_err(|refused| refusal(refused, &node_id, &token_id, peer))?;
        tracing::info!(node = %node_id, token = %token_id, ?peer, "node joined: certificate issued");
        Ok(Response::new(pb::JoinResponse {
            certificate_pem,
            ca_pem,
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (pki, peer) = (self.pki()?, request.remote_addr());
        // The handshake verified the chain and the validity; the identity is only this.
        let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) else {
            return Err(Status::unauthenticated(
                "renewal needs the node's current client certificate (mutual TLS)",
            ));
        };
        let names = crate::tls::certificate_identities(leaf.as_ref());
        let node_id = names.first().cloned().unwrap_or_default();
        let csr_pem = request.into_inner().csr_pem;
        let outcome = tokio::task::spawn_blocking(move || {
            pki.renew(leaf.as_ref(), &csr_pem, crate::now_ms())
        })
        .await
        .map_err(|e| Status::internal(format!("renew: {e}")))?;
        let (certificate_pem, ca_pem) =
            outcome.map_err(|refused| refusal(refused, &node_id, "(renewal)", peer))?;
        tracing::info!(node = %node_id, ?peer, "node certificate renewed");
        Ok(Response::new(pb::JoinResponse {
            certificate_pem,
            ca_pem,
        }))
    }
}
