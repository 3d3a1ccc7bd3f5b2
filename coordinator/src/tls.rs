//! TLS on the coordinator's port (agent stream, operator API, dashboard), from the PEM files
//! named in the config. With `tls_client_ca_file`, agents must present a certificate signed by
//! that CA (mutual TLS); operators and browsers may connect without one, since they prove who
//! they are with an operator token instead, and the check for agents is made on their stream.

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::CoordinatorConfig;

/// A TLS file that cannot be read, named by its key and path.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {source}")]
pub struct TlsFileError {
    key: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// The server TLS settings, or `None` when `tls_cert_file` is not set (plain TCP).
pub fn server_config(config: &CoordinatorConfig) -> Result<Option<ServerTlsConfig>, TlsFileError> {
    if config.tls_cert_file.as_os_str().is_empty() {
        return Ok(None);
    }
    // Two rustls crypto providers are compiled in (object storage brings aws-lc-rs), so rustls
    // cannot pick one by itself; an Err only means one was installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = read("tls_cert_file", &config.tls_cert_file)?;
    let key = read("tls_key_file", &config.tls_key_file)?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !config.tls_client_ca_file.as_os_str().is_empty() {
        let ca = read("tls_client_ca_file", &config.tls_client_ca_file)?;
        tls = tls
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// The identities a client certificate names: its DNS subject alternative names, then its
/// common name(s). Empty when the certificate cannot be parsed.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_string());
        }
    }
    names
}

/// True when agents must present a client certificate (a client CA is configured).
pub fn agents_need_certificates(config: &CoordinatorConfig) -> bool {
    !config.tls_cert_file.as_os_str().is_empty()
        && !config.tls_client_ca_file.as_os_str().is_empty()
}
