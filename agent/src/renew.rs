//! Keeping a joined agent's node certificate valid: once two thirds of its lifetime
//! (`not_before..not_after`) have passed, the agent makes a fresh key and asks the coordinator
//! for a new certificate over mutual TLS with the current one (`JoinService.Renew`: the
//! coordinator takes the node id from the presented certificate). The new pair replaces the
//! old one in `<state_dir>/pki`, and the next connection uses it.
//!
//! The pair is written so that a crash leaves the old pair or the new one, never a mix: both
//! are written whole beside their places (`node.key.next`, `node.pem.next`), then the key and
//! the certificate are renamed over the old ones in that order; [`recover`] finishes a pair
//! whose key was already renamed, or drops one whose key was not.

use std::path::Path;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use pb::join_service_client::JoinServiceClient;

use crate::join::{hash_of_pem, write_private, JoinError, COORDINATOR_NAME};
use crate::AgentConfig;

/// Whether this agent's TLS files are the ones it joined with (`<state_dir>/pki`), which it
/// renews itself; certificates configured by hand are the operator's to renew.
pub fn joined(config: &AgentConfig) -> bool {
    let dir = config.state_dir.join("pki");
    config.tls_cert_file == dir.join("node.pem") && config.tls_key_file == dir.join("node.key")
}

/// `(not_before, not_after)` of the PEM certificate, unix seconds.
pub fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// How long from `now_s` until a certificate valid `(from, to)` is due for renewal (two
/// thirds of its lifetime); zero when it is due.
pub fn until_due((from, to): (i64, i64), now_s: i64) -> Duration {
    let due = from.saturating_add(to.saturating_sub(from).saturating_mul(2) / 3);
    Duration::from_secs(u64::try_from(due.saturating_sub(now_s)).unwrap_or(0))
}

/// Renews the node certificate forever, each time it is due; a failure is logged and retried
/// after a tenth of what is left of the certificate's life (1 s to 5 min).
pub async fn keep_renewed(config: AgentConfig) {
    loop {
        let now = now_s();
        let current = std::fs::read(&config.tls_cert_file)
            .ok()
            .and_then(|pem| validity(&pem));
        let Some((from, to)) = current else {
            tracing::error!(
                "{}: unreadable node certificate: not renewing it",
                config.tls_cert_file.display()
            );
            return;
        };
        let wait = until_due((from, to), now);
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            continue;
        }
        match renew(&config).await {
            Ok(address) => {
                tracing::info!(%address, "node certificate renewed: the next connection uses it");
            }
            Err(e) => {
                let left = u64::try_from(to.saturating_sub(now)).unwrap_or(0) / 10;
                let retry = Duration::from_secs(left.clamp(1, 300));
                tracing::warn!(?retry, "node certificate renewal failed: {e}");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// One renewal with a fresh key, from the first coordinator that answers; returns its
/// address.
pub async fn renew(config: &AgentConfig) -> Result<String, JoinError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| JoinError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    let ca = read(&config.tls_ca_file)?;
    let cert = read(&config.tls_cert_file)?;
    let key_now = read(&config.tls_key_file)?;
    let node_id = config.effective_node_id();
    let (key, csr_pem) = crate::join::new_key_and_csr(&node_id)?;
    let server_name = if config.tls_server_name.is_empty() {
        COORDINATOR_NAME.to_string()
    } else {
        config.tls_server_name.clone()
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name(server_name)
        .identity(tonic::transport::Identity::from_pem(cert, key_now));
    let mut last = None;
    for address in config.coordinators() {
        let unreachable = |reason: String| JoinError::Coordinator {
            address: address.clone(),
            reason,
        };
        let channel = match tonic::transport::Endpoint::from_shared(address.clone())
            .map_err(|e| unreachable(format!("bad address: {e}")))
            .and_then(|e| {
                e.connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30))
                    .tls_config(tls.clone())
                    .map_err(|e| unreachable(format!("TLS settings: {e}")))
            }) {
            Ok(endpoint) => match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => {
                    last = Some(unreachable(format!("cannot connect: {e}")));
                    continue;
                }
            },
            Err(e) => return Err(e),
        };
        let reply = match JoinServiceClient::new(channel)
            .renew(pb::RenewRequest {
                csr_pem: csr_pem.clone(),
            })
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) =>
            {
                last = Some(unreachable(status.message().to_string()));
                continue;
            }
            Err(status) => return Err(JoinError::Refused(status.message().to_string())),
        };
        // The CA handed back must be the one already trusted.
        let pinned = std::str::from_utf8(&ca).ok().and_then(hash_of_pem);
        if pinned.is_none() || hash_of_pem(&reply.ca_pem) != pinned {
            return Err(JoinError::WrongCa {
                address: address.clone(),
                hash: pinned.unwrap_or_default(),
            });
        }
        store(
            config,
            key.serialize_pem().as_bytes(),
            reply.certificate_pem.as_bytes(),
        )?;
        return Ok(address);
    }
    Err(last.unwrap_or(JoinError::NotHttps))
}

/// Replaces the key and certificate files with the new pair (see the module's note).
fn store(config: &AgentConfig, key_pem: &[u8], cert_pem: &[u8]) -> Result<(), JoinError> {
    let (key, cert) = (&config.tls_key_file, &config.tls_cert_file);
    let (key_next, cert_next) = (next(key), next(cert));
    write_private(&key_next, key_pem)?;
    write_private(&cert_next, cert_pem)?;
    rename(&key_next, key)?;
    rename(&cert_next, cert)
}

/// Finishes or drops a renewal that a crash interrupted in `dir` (`node.key`, `node.pem`).
pub fn recover(dir: &Path) -> Result<(), JoinError> {
    let (key, cert) = (dir.join("node.key"), dir.join("node.pem"));
    let (key_next, cert_next) = (next(&key), next(&cert));
    if !cert_next.exists() {
        return Ok(());
    }
    if key_next.exists() {
        // Neither was renamed: the old pair is whole.
        for path in [&key_next, &cert_next] {
            std::fs::remove_file(path).map_err(|source| JoinError::Write {
                path: path.clone(),
                source,
            })?;
        }
        return Ok(());
    }
    // The new key is in place: so must its certificate be.
    rename(&cert_next, &cert)
}

fn next(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".next");
    name.into()
}

fn rename(from: &Path, to: &Path) -> Result<(), JoinError> {
    let failed = |source| JoinError::Write {
        path: to.to_path_buf(),
        source,
    };
    std::fs::rename(from, to).map_err(failed)?;
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_two_thirds_of_the_lifetime() {
        assert_eq!(until_due((1000, 1300), 1000), Duration::from_secs(200));
        assert_eq!(until_due((1000, 1300), 1199), Duration::from_secs(1));
        assert_eq!(until_due((1000, 1300), 1200), Duration::ZERO);
        assert_eq!(until_due((1000, 1300), 5000), Duration::ZERO);
        assert_eq!(until_due((i64::MIN, i64::MAX), 0), Duration::ZERO);
    }

    #[test]
    fn an_interrupted_renewal_leaves_one_whole_pair() {
        let dir = std::env::temp_dir().join(format!("holdfast-renew-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        // Recovers, then the pair in place.
        let recovered = || {
            recover(&dir).unwrap();
            (read("node.key"), read("node.pem"))
        };
        // Crash before any rename: the old pair stays.
        write("node.key", "old key");
        write("node.pem", "old cert");
        write("node.key.next", "new key");
        write("node.pem.next", "new cert");
        assert_eq!(recovered(), ("old key".into(), "old cert".into()));
        assert!(!dir.join("node.key.next").exists() && !dir.join("node.pem.next").exists());
        // Crash after the key's rename: the new certificate follows it.
        write("node.key", "new key");
        write("node.pem.next", "new cert");
        assert_eq!(recovered(), ("new key".into(), "new cert".into()));
        recover(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
