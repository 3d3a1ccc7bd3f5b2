//! Joining the cluster with a token, the way `kubeadm join` does: the agent trusts the
//! coordinator only through the CA whose public-key hash the operator gave it (`--ca-hash`),
//! proves it may join with the token, and gets a client certificate for its node id, signed
//! from a request made with a key that never leaves this host. From then on it speaks mutual
//! TLS with the files in `<state_dir>/pki` and needs no token.
//!
//! 1. [`fetch_pinned_ca`]: a TLS handshake whose verifier accepts the coordinator only when
//!    its chain holds a CA with the pinned hash and that CA signed the serving certificate
//!    (for [`COORDINATOR_NAME`]). Nothing is sent on that connection.
//! 2. The `Join` call over ordinary TLS verified with that CA: token, node id, CSR.
//! 3. `ca.pem`, `node.pem`, `node.key` written 0600 (temp + fsync + rename).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::join_service_client::JoinServiceClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::AgentConfig;

/// The name the coordinator's bootstrapped serving certificate carries, verified by joined
/// agents whatever address they dial.
pub const COORDINATOR_NAME: &str = "holdfast-coordinator";

/// What the operator gives an agent to join: `--join` and `--ca-hash`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `ID.SECRET`.
    pub token: String,
    /// `sha256:HEX` of the cluster CA's public key.
    pub ca_hash: String,
}

/// Why the agent could not join, or has not.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "{address}: https:// without tls_ca_file, and this agent has not joined yet \
         (no {dir}/node.pem): start it once with --join TOKEN --ca-hash sha256:… \
         (both printed by the coordinator's first start and by `holdfast token create`)"
    )]
    NotJoined { address: String, dir: String },
    #[error("--ca-hash {0:?}: expected sha256: followed by 64 hex digits")]
    BadHash(String),
    #[error("--join: a join token is ID.SECRET")]
    BadToken,
    #[error("joining needs https:// coordinator addresses (the token must not cross the network in the clear)")]
    NotHttps,
    #[error("{address}: {reason}")]
    Coordinator { address: String, reason: String },
    #[error("{address}: the coordinator's certificate chain holds no CA with hash {hash}: wrong --ca-hash, or not the coordinator you meant")]
    WrongCa { address: String, hash: String },
    #[error("the join was refused: {0}")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the node key: {0}")]
    Key(String),
}

/// Fills in the TLS settings of `config` from this agent's joined credentials, joining first
/// when it has none and `join` is given. Does nothing with plain `http://` addresses or when
/// `tls_ca_file` is configured by hand.
pub async fn prepare(config: &mut AgentConfig, join: Option<JoinOptions>) -> Result<(), JoinError> {
    let addresses = config.coordinators();
    if !config.tls_ca_file.as_os_str().is_empty() {
        return Ok(());
    }
    let https = !addresses.is_empty() && addresses.iter().all(|a| a.starts_with("https://"));
    if !https {
        return match join {
            Some(_) => Err(JoinError::NotHttps),
            None => Ok(()),
        };
    }
    let dir = config.state_dir.join("pki");
    crate::renew::recover(&dir)?;
    if !dir.join("node.pem").exists() || !dir.join("node.key").exists() {
        let Some(join) = join else {
            return Err(JoinError::NotJoined {
                address: addresses.join(","),
                dir: dir.display().to_string(),
            });
        };
        join_cluster(config, &addresses, &dir, &join).await?;
    }
    config.tls_ca_file = dir.join("ca.pem");
    config.tls_cert_file = dir.join("node.pem");
    config.tls_key_file = dir.join("node.key");
    if config.tls_server_name.is_empty() {
        config.tls_server_name = COORDINATOR_NAME.to_string();
    }
    Ok(())
}

async fn join_cluster(
    config: &AgentConfig,
    addresses: &[String],
    dir: &Path,
    join: &JoinOptions,
) -> Result<(), JoinError> {
    let pin = normalize_hash(&join.ca_hash)?;
    if !join.token.contains('.') || join.token.len() > 256 {
        return Err(JoinError::BadToken);
    }
    let node_id = config.effective_node_id();
    let (key, csr) = new_key_and_csr(&node_id)?;
    let mut last = None;
    // With several coordinators only the leader serves: the first that answers is asked.
    for address in addresses {
        match join_at(address, &pin, &join.token, &node_id, &csr).await {
            Ok((cert, ca)) => {
                std::fs::create_dir_all(dir).map_err(|source| JoinError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                        |source| JoinError::Write {
                            path: dir.to_path_buf(),
                            source,
                        },
                    )?;
                }
                write_private(&dir.join("node.key"), key.serialize_pem().as_bytes())?;
                write_private(&dir.join("ca.pem"), ca.as_bytes())?;
                // node.pem last: its presence is what says the agent has joined.
                write_private(&dir.join("node.pem"), cert.as_bytes())?;
                tracing::info!(node = %node_id, %address, "joined the cluster: node certificate in {}", dir.display());
                return Ok(());
            }
            Err(e @ (JoinError::Refused(_) | JoinError::WrongCa { .. })) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(JoinError::NotHttps))
}

async fn join_at(
    address: &str,
    pin: &str,
    token: &str,
    node_id: &str,
    csr_pem: &str,
) -> Result<(String, String), JoinError> {
    let ca_der = fetch_pinned_ca(address, pin).await?;
    let ca_pem = pem_of(&ca_der);
    let unreachable = |reason: String| JoinError::Coordinator {
        address: address.to_string(),
        reason,
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem.as_bytes()))
        .domain_name(COORDINATOR_NAME);
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| unreachable(format!("bad address: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_config(tls)
        .map_err(|e| unreachable(format!("TLS settings: {e}")))?
        .connect()
        .await
        .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
    let reply = JoinServiceClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_string(),
            node_id: node_id.to_string(),
            csr_pem: csr_pem.to_string(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                unreachable(status.message().to_string())
            }
            _ => JoinError::Refused(status.message().to_string()),
        })?
        .into_inner();
    // The CA handed back must be the pinned one too: nothing else is written as trusted.
    if hash_of_pem(&reply.ca_pem).as_deref() != Some(pin) {
        return Err(JoinError::WrongCa {
            address: address.to_string(),
            hash: pin.to_string(),
        });
    }
    Ok((reply.certificate_pem, reply.ca_pem))
}

/// `sha256:HEX` (lower case) or an error naming the flag.
/// A fresh key pair and a certificate request (PEM) for `node_id` signed with it.
pub(crate) fn new_key_and_csr(node_id: &str) -> Result<(rcgen::KeyPair, String), JoinError> {
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Key(e.to_string()))?;
    let csr = rcgen::CertificateParams::new(vec![node_id.to_string()])
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(|e| JoinError::Key(format!("node id {node_id:?}: {e}")))?;
    Ok((key, csr))
}

fn normalize_hash(hash: &str) -> Result<String, JoinError> {
    let hex = hash.trim().strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JoinError::BadHash(hash.to_string()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `sha256:HEX` of the public key of a DER certificate.
pub fn hash_of_der(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Some(format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

pub(crate) fn hash_of_pem(pem: &str) -> Option<String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    hash_of_der(&block.contents)
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

/// Connects to `address` and returns the DER of the CA in its certificate chain whose public
/// key hashes to `pin`, after checking that this CA signed the serving certificate for
/// [`COORDINATOR_NAME`] (and that the server holds that certificate's key: the handshake's
/// signatures are verified). Sends nothing.
pub async fn fetch_pinned_ca(address: &str, pin: &str) -> Result<Vec<u8>, JoinError> {
    let coordinator = |reason: String| JoinError::Coordinator {
        address: address.to_string(),
        reason,
    };
    let url = url::Url::parse(address).map_err(|e| coordinator(format!("bad address: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| coordinator("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        pin: pin.to_string(),
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| coordinator(format!("TLS settings: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| coordinator("connect timed out".into()))?
    .map_err(|e| coordinator(format!("cannot connect: {e}")))?;
    let name = ServerName::try_from(COORDINATOR_NAME)
        .map_err(|e| coordinator(format!("server name: {e}")))?;
    let handshake = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| coordinator("TLS handshake timed out".into()))?;
    let found = verifier.found.lock().ok().and_then(|mut f| f.take());
    match (handshake, found) {
        (Ok(_), Some(ca)) => Ok(ca),
        (_, None) => Err(JoinError::WrongCa {
            address: address.to_string(),
            hash: pin.to_string(),
        }),
        (Err(e), Some(_)) => Err(coordinator(format!("TLS handshake: {e}"))),
    }
}

/// The handshake's signatures are checked as rustls always does (message, certificate, signed
/// struct), with the provider's algorithms.
type Der<'a> = CertificateDer<'a>;
type Signed = DigitallySignedStruct;
type Verdict = Result<HandshakeSignatureValid, rustls::Error>;

impl PinnedCa {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// Accepts a server whose chain holds the CA with the pinned hash, verifying the chain with
/// that CA as the only root.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| hash_of_der(c.as_ref()).as_deref() == Some(self.pin.as_str()))
        else {
            return Err(rustls::Error::General(
                "no CA with the pinned hash in the chain".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut found) = self.found.lock() {
            *found = Some(ca.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &Der<'_>, d: &Signed) -> Verdict {
        rustls::crypto::verify_tls12_signature(m, c, d, self.algorithms())
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &Der<'_>, d: &Signed) -> Verdict {
        rustls::crypto::verify_tls13_signature(m, c, d, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Writes a secret file: 0600, whole or not at all.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), JoinError> {
    crate::durable::write_private(path, bytes).map_err(|source| JoinError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_for_shape() {
        let good = format!("sha256:{}", "Ab".repeat(32));
        assert_eq!(
            normalize_hash(&good).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(
                matches!(normalize_hash(bad), Err(JoinError::BadHash(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pem_round_trips_through_the_parser() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = pem_of(cert.der());
        assert_eq!(hash_of_pem(&pem), hash_of_der(cert.der()));
        assert!(hash_of_pem(&pem).is_some());
    }
}
