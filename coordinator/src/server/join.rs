//! `JoinService.Join`: a new agent trades a join token and a certificate signing request for
//! its node certificate (see [`crate::pki`]). Served without a client certificate — the agent
//! has none yet — and only with `pki_dir` set, which itself needs TLS, so a token never
//! crosses the network in the clear.

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
    /// Joins into the PKI at `pki_dir`; none when it is empty.
    pub fn new(pki_dir: &std::path::Path) -> Joins {
        Joins {
            pki: (!pki_dir.as_os_str().is_empty()).then(|| Pki::new(pki_dir)),
        }
    }
}

#[tonic::async_trait]
impl JoinService for Joins {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let Some(pki) = self.pki.clone() else {
            return Err(Status::failed_precondition(
                "this coordinator takes no joins (no pki_dir: it was not bootstrapped)",
            ));
        };
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
        match outcome {
            Ok((certificate_pem, ca_pem)) => {
                tracing::info!(node = %node_id, token = %token_id, ?peer, "node joined: certificate issued");
                Ok(Response::new(pb::JoinResponse {
                    certificate_pem,
                    ca_pem,
                }))
            }
            Err(refused) => {
                let shown: String = node_id.chars().take(128).collect();
                tracing::warn!(node = %shown, token = %token_id, ?peer, "join refused: {refused}");
                Err(match refused {
                    JoinRefused::Token => Status::permission_denied(refused.to_string()),
                    JoinRefused::NodeTaken(_) => Status::already_exists(refused.to_string()),
                    JoinRefused::NodeId(_) | JoinRefused::Csr(_) => {
                        Status::invalid_argument(refused.to_string())
                    }
                    JoinRefused::Pki(e) => {
                        tracing::error!("join: {e}");
                        Status::internal("the coordinator cannot read or write its pki directory")
                    }
                })
            }
        }
    }
}
