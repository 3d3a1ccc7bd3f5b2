//! The cluster's own certificate authority, made on the coordinator's first start, and what it
//! issues: the coordinator's serving certificate, the admin operator token, join tokens, and
//! one client certificate per node id (signed from the agent's certificate signing request, so
//! its key never leaves its host). The way `kubeadm init` / `kubeadm join` bootstrap nodes.
//!
//! Everything lives in one directory (0700), each file 0600, written temp + fsync + rename +
//! directory fsync, so a crash never leaves half a key. Read-modify-write of the token and
//! issued-certificate lists is done under an exclusive lock on `pki.lock`: `holdfast token`
//! on the same host and the serving coordinator change them safely side by side.
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the cluster CA (10 years) |
//! | `server.pem`, `server.key` | the serving certificate + CA chain, renewed at every start |
//! | `operator-tokens`, `admin.token` | the admin operator token (`operator` role) |
//! | `join-tokens.json` | join tokens: id, SHA-256 of the secret, expiry, description |
//! | `issued.json` | node certificates: node id → serial, expiry, revoked, superseded serials |
//!
//! A joined agent renews its certificate before it expires ([`Pki::renew`], in `renew.rs`):
//! authenticated by the certificate it presents, never by what its request says.

mod renew;
pub use renew::Superseded;

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};

use crate::CoordinatorConfig;

/// The name every coordinator serving certificate carries and joined agents verify: agents may
/// reach the coordinator at any address, so they check this name, not the one they dialed.
/// Node certificates never carry it (a node id of this name is refused at join) and are client
/// certificates only.
pub const COORDINATOR_NAME: &str = "holdfast-coordinator";
/// The files [`Pki::bootstrap`] makes on a first start (each 0600).
pub const FIRST_START_FILES: &[&str] = &[
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "operator-tokens",
    "admin.token",
    "join-tokens.json",
];
/// Lifetime of a node certificate unless the config says otherwise (`node_cert_lifetime_s`).
pub const NODE_CERT_DAYS: i64 = 90;
/// Lifetime of the serving certificate (renewed at every start).
const SERVER_CERT_DAYS: i64 = 365;
/// Lifetime of the cluster CA.
const CA_DAYS: i64 = 3650;
/// Lifetime of the join token made on the first start.
pub const FIRST_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What went wrong with the PKI directory itself.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("pki directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pki directory: {file}: {reason}")]
    Bad { file: String, reason: String },
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Why a join is refused; said to the agent as it is (it names no secret).
#[derive(Debug, thiserror::Error)]
pub enum JoinRefused {
    #[error("the join token is not valid (unknown, revoked, expired or malformed)")]
    Token,
    #[error("node id {0:?} already has a certificate that is neither revoked nor expired (revoke it first: holdfast cert revoke {0})")]
    NodeTaken(String),
    #[error("node id: {0}")]
    NodeId(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error("the presented certificate cannot be renewed: {0}")]
    Renewal(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// A join token as `holdfast token list` shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinToken {
    /// The public part of `ID.SECRET`.
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// Unix ms after which it is refused; 0 = never.
    pub expires_unix_ms: i64,
    /// What it is for (free text).
    #[serde(default)]
    pub description: String,
    /// Joins made with it.
    #[serde(default)]
    pub uses: u64,
}

/// One issued node certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCert {
    /// Serial number, hex.
    pub serial: String,
    /// When it was issued and when it expires (unix ms).
    pub issued_unix_ms: i64,
    pub expires_unix_ms: i64,
    /// Revoked certificates are refused on the agent stream.
    #[serde(default)]
    pub revoked: bool,
    /// The join token that obtained it.
    #[serde(default)]
    pub token_id: String,
    /// Earlier certificates of this node id replaced by a renewal or a new join, kept while
    /// they would still be valid: revoked with the node (or when the node was revoked before a
    /// new join), otherwise still accepted (an agent that crashed before it stored its renewed
    /// certificate still connects and renews).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<Superseded>,
}

/// What [`Pki::bootstrap`] made on this start (secrets are shown once, by the caller).
#[derive(Debug)]
pub struct Bootstrap {
    /// The admin operator token, when it was made now.
    pub admin_token: Option<String>,
    /// A join token (`ID.SECRET`), when it was made now.
    pub join_token: Option<String>,
    /// `sha256:…` of the CA's public key: what agents pin with `--ca-hash`.
    pub ca_hash: String,
}

/// The PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    node_cert_ms: i64,
}

impl Pki {
    /// The PKI kept in `dir` (nothing is read or made yet).
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki {
            dir: dir.into(),
            node_cert_ms: NODE_CERT_DAYS * 86_400_000,
        }
    }

    /// The same PKI, issuing node certificates that live `seconds` (validated by the config:
    /// `node_cert_lifetime_s`).
    pub fn with_node_cert_lifetime(mut self, seconds: u64) -> Pki {
        self.node_cert_ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        self
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(&self, source: std::io::Error) -> PkiError {
        PkiError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }

    /// Makes what is missing: on the first start the CA, the admin token and a join token; on
    /// every start a fresh serving certificate for [`COORDINATOR_NAME`], `localhost`, the
    /// loopback addresses, this host's name and `extra_names`.
    pub fn bootstrap(&self, extra_names: &[String], now_ms: i64) -> Result<Bootstrap, PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(e))?;
        let _lock = self.lock()?;
        if !self.path("ca.pem").exists() || !self.path("ca.key").exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name("holdfast cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, now_ms, CA_DAYS);
            let cert = params.self_signed(&key)?;
            write_private(&self.path("ca.key"), key.serialize_pem().as_bytes())?;
            write_private(&self.path("ca.pem"), cert.pem().as_bytes())?;
            tracing::info!(dir = %self.dir.display(), "made the cluster CA");
        }
        let (ca_pem, issuer) = self.issuer()?;
        let mut names = vec![
            COORDINATOR_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() && host.len() <= 253 {
                names.push(host.to_string());
            }
        }
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name(COORDINATOR_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial()?);
        validity(&mut params, now_ms, SERVER_CERT_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&self.path("server.key"), key.serialize_pem().as_bytes())?;
        write_private(
            &self.path("server.pem"),
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
        )?;

        let admin_token = if self.path("operator-tokens").exists() {
            None
        } else {
            let token = random_text(40)?;
            write_private(
                &self.path("operator-tokens"),
                format!(
                    "# made by holdfast coordinator on its first start; admin.token holds the same token\n\
                     operator {token}\n"
                )
                .as_bytes(),
            )?;
            write_private(&self.path("admin.token"), format!("{token}\n").as_bytes())?;
            Some(token)
        };
        let join_token = if self.path("join-tokens.json").exists() {
            None
        } else {
            Some(self.create_join_token_locked(
                FIRST_JOIN_TOKEN_TTL,
                "made on the coordinator's first start",
                now_ms,
            )?)
        };
        Ok(Bootstrap {
            admin_token,
            join_token,
            ca_hash: self.ca_hash()?,
        })
    }

    /// Points `config`'s TLS, client CA, operator token and pki settings at this directory.
    pub fn apply(&self, config: &mut CoordinatorConfig) {
        config.tls_cert_file = self.path("server.pem");
        config.tls_key_file = self.path("server.key");
        config.tls_client_ca_file = self.path("ca.pem");
        config.operator_tokens_file = self.path("operator-tokens");
        config.pki_dir = self.dir.clone();
    }

    /// `sha256:HEX` of the CA certificate's public key (SubjectPublicKeyInfo).
    pub fn ca_hash(&self) -> Result<String, PkiError> {
        let pem = self.read_text("ca.pem")?;
        ca_hash_of_pem(&pem).ok_or_else(|| PkiError::Bad {
            file: "ca.pem".into(),
            reason: "not a PEM certificate".into(),
        })
    }

    /// A new join token `ID.SECRET` valid for `ttl` (zero: never expires).
    pub fn create_join_token(
        &self,
        ttl: Duration,
        description: &str,
        now_ms: i64,
    ) -> Result<String, PkiError> {
        let _lock = self.lock()?;
        self.create_join_token_locked(ttl, description, now_ms)
    }

    fn create_join_token_locked(
        &self,
        ttl: Duration,
        description: &str,
        now_ms: i64,
    ) -> Result<String, PkiError> {
        let mut tokens = self.join_tokens()?;
        let id = random_text(6)?;
        let secret = random_text(16)?;
        let expires_unix_ms = if ttl.is_zero() {
            0
        } else {
            now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        };
        tokens.push(JoinToken {
            id: id.clone(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            expires_unix_ms,
            description: description.chars().take(256).collect(),
            uses: 0,
        });
        self.write_json("join-tokens.json", &tokens)?;
        Ok(format!("{id}.{secret}"))
    }

    /// The join tokens (none when the file does not exist yet).
    pub fn join_tokens(&self) -> Result<Vec<JoinToken>, PkiError> {
        self.read_json("join-tokens.json")
    }

    /// Removes the join token `id`; false when there was none.
    pub fn revoke_join_token(&self, id: &str) -> Result<bool, PkiError> {
        let _lock = self.lock()?;
        let mut tokens = self.join_tokens()?;
        let before = tokens.len();
        tokens.retain(|t| t.id != id);
        if tokens.len() == before {
            return Ok(false);
        }
        self.write_json("join-tokens.json", &tokens)?;
        Ok(true)
    }

    /// The issued node certificates.
    pub fn issued(&self) -> Result<BTreeMap<String, IssuedCert>, PkiError> {
        self.read_json("issued.json")
    }

    /// Revokes node `node_id`'s certificate: its agent stream is refused from its next
    /// connection on, and the node id may join again. False when none was issued.
    pub fn revoke_node(&self, node_id: &str) -> Result<bool, PkiError> {
        let _lock = self.lock()?;
        let mut issued = self.issued()?;
        let Some(cert) = issued.get_mut(node_id) else {
            return Ok(false);
        };
        cert.revoked = true;
        cert.superseded
            .iter_mut()
            .for_each(|old| old.revoked = true);
        self.write_json("issued.json", &issued)?;
        Ok(true)
    }

    /// True when the certificate with serial `serial` (hex) was revoked here.
    pub fn is_revoked(&self, serial: &str) -> Result<bool, PkiError> {
        Ok(self.issued()?.values().any(|c| {
            (c.revoked && c.serial.eq_ignore_ascii_case(serial))
                || c.superseded
                    .iter()
                    .any(|old| old.revoked && old.serial.eq_ignore_ascii_case(serial))
        }))
    }

    /// Checks `token` and signs a client certificate for `node_id` with the public key of
    /// `csr_pem` (whose own signature proves the agent holds the key). The certificate's only
    /// name is the node id; whatever else the request asks for is ignored.
    pub fn join(
        &self,
        token: &str,
        node_id: &str,
        csr_pem: &str,
        now_ms: i64,
    ) -> Result<(String, String), JoinRefused> {
        check_node_id(node_id)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| JoinRefused::Csr(e.to_string()))?;
        let _lock = self.lock()?;
        let mut tokens = self.join_tokens()?;
        let token_index = find_token(&tokens, token, now_ms).ok_or(JoinRefused::Token)?;
        let mut issued = self.issued()?;
        let (ca_pem, issuer) = self.issuer()?;
        let token_id = tokens[token_index].id.clone();
        let cert = sign(
            &issuer,
            &mut issued,
            node_id,
            &csr.public_key,
            &token_id,
            (now_ms, self.node_cert_ms),
        )?;
        tokens[token_index].uses = tokens[token_index].uses.saturating_add(1);
        self.write_json("issued.json", &issued)?;
        self.write_json("join-tokens.json", &tokens)?;
        Ok((cert, ca_pem))
    }

    /// Issues node certificates here, with keys made here, for `node_ids` (the same rules as
    /// [`Pki::join`] but no token: whoever can read `ca.key` is the CA anyway). For
    /// pre-provisioned hosts and the swarm benchmark; returns `(certificate, key)` PEMs in
    /// order, recorded in one write.
    pub fn issue_here(
        &self,
        node_ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, JoinRefused> {
        node_ids.iter().try_for_each(|n| check_node_id(n))?;
        let _lock = self.lock()?;
        let mut issued = self.issued()?;
        let (_, issuer) = self.issuer()?;
        let mut out = Vec::with_capacity(node_ids.len());
        for node_id in node_ids {
            let key = KeyPair::generate().map_err(|e| JoinRefused::Pki(e.into()))?;
            let cert = sign(
                &issuer,
                &mut issued,
                node_id,
                &key,
                "(issued here)",
                (now_ms, self.node_cert_ms),
            )?;
            out.push((cert, key.serialize_pem()));
        }
        self.write_json("issued.json", &issued)?;
        Ok(out)
    }

    fn issuer(&self) -> Result<(String, Issuer<'static, KeyPair>), PkiError> {
        let ca_pem = self.read_text("ca.pem")?;
        let key = KeyPair::from_pem(&self.read_text("ca.key")?).map_err(|e| PkiError::Bad {
            file: "ca.key".into(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| PkiError::Bad {
            file: "ca.pem".into(),
            reason: e.to_string(),
        })?;
        Ok((ca_pem, issuer))
    }

    fn read_text(&self, file: &str) -> Result<String, PkiError> {
        std::fs::read_to_string(self.path(file)).map_err(|source| PkiError::Io {
            path: self.path(file).display().to_string(),
            source,
        })
    }

    fn read_json<T: serde::de::DeserializeOwned + Default>(
        &self,
        file: &str,
    ) -> Result<T, PkiError> {
        match std::fs::read(self.path(file)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PkiError::Bad {
                file: file.into(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(source) => Err(PkiError::Io {
                path: self.path(file).display().to_string(),
                source,
            }),
        }
    }

    fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), PkiError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| PkiError::Bad {
            file: file.into(),
            reason: e.to_string(),
        })?;
        write_private(&self.path(file), &bytes)
    }

    fn lock(&self) -> Result<std::fs::File, PkiError> {
        let path = self.path("pki.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })?;
        keep_owner(&path);
        file.lock().map_err(|source| PkiError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(file)
    }
}

/// The rule for a node id in a certificate: a node id hellos accept, and not the
/// coordinator's own names.
fn check_node_id(node_id: &str) -> Result<(), JoinRefused> {
    if !holdfast_core::limits::is_identifier(node_id, holdfast_core::limits::MAX_NODE_ID) {
        return Err(JoinRefused::NodeId(format!(
            "must be 1 to {} characters of [A-Za-z0-9._-]",
            holdfast_core::limits::MAX_NODE_ID
        )));
    }
    if node_id.eq_ignore_ascii_case(COORDINATOR_NAME) || node_id == "localhost" {
        return Err(JoinRefused::NodeId(format!(
            "{node_id:?} is reserved for the coordinator"
        )));
    }
    Ok(())
}

/// Signs a client-only certificate whose one name is `node_id` for `public_key`, and records
/// it in `issued` for `(now_ms, lifetime_ms)`; refused while the node id holds a live
/// certificate. The one it replaces, while still valid, is kept as superseded (revoked: only
/// a revoked or expired one is replaced here).
fn sign(
    issuer: &Issuer<'static, KeyPair>,
    issued: &mut BTreeMap<String, IssuedCert>,
    node_id: &str,
    public_key: &impl rcgen::PublicKeyData,
    token_id: &str,
    (now_ms, lifetime_ms): (i64, i64),
) -> Result<String, JoinRefused> {
    let mut superseded = Vec::new();
    if let Some(cert) = issued.get(node_id) {
        if !cert.revoked && cert.expires_unix_ms > now_ms {
            return Err(JoinRefused::NodeTaken(node_id.to_string()));
        }
        superseded = cert.superseded.clone();
        superseded.push(Superseded {
            serial: cert.serial.clone(),
            expires_unix_ms: cert.expires_unix_ms,
            revoked: cert.revoked,
        });
        superseded.retain(|old| old.expires_unix_ms > now_ms);
    }
    let mut params = CertificateParams::new(vec![node_id.to_string()])
        .map_err(|e| JoinRefused::NodeId(e.to_string()))?;
    params.distinguished_name = name(node_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let serial = random_serial().map_err(JoinRefused::Pki)?;
    let serial_hex = hex(&serial.to_bytes());
    params.serial_number = Some(serial);
    let now = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let lifetime = time::Duration::milliseconds(lifetime_ms);
    // Backdated as the other certificates, but never by more than its lifetime: an agent
    // renews at two thirds of not_before..not_after.
    params.not_before = now - lifetime.min(time::Duration::hours(1));
    params.not_after = now + lifetime;
    let cert = params
        .signed_by(public_key, issuer)
        .map_err(|e| JoinRefused::Pki(e.into()))?;
    issued.insert(
        node_id.to_string(),
        IssuedCert {
            serial: serial_hex,
            issued_unix_ms: now_ms,
            expires_unix_ms: now_ms.saturating_add(lifetime_ms),
            revoked: false,
            token_id: token_id.to_string(),
            superseded,
        },
    );
    Ok(cert.pem())
}

/// The index of the token `ID.SECRET` if it is known, unexpired and its secret matches.
fn find_token(tokens: &[JoinToken], token: &str, now_ms: i64) -> Option<usize> {
    let (id, secret) = token.trim().split_once('.')?;
    let index = tokens.iter().position(|t| t.id == id)?;
    let known = &tokens[index];
    if known.expires_unix_ms != 0 && known.expires_unix_ms <= now_ms {
        return None;
    }
    let given = sha256_hex(secret.as_bytes());
    constant_time_eq(given.as_bytes(), known.secret_sha256.as_bytes()).then_some(index)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `sha256:HEX` of the public key of the first certificate in `pem`.
pub fn ca_hash_of_pem(pem: &str) -> Option<String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    Some(format!(
        "sha256:{}",
        sha256_hex(cert.tbs_certificate.subject_pki.raw)
    ))
}

/// The serial of a DER certificate, hex (as [`IssuedCert::serial`]).
pub fn serial_of_der(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(hex(cert.raw_serial()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, now_ms: i64, days: i64) {
    let now = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // An hour back: hosts whose clocks run a little behind still accept it at once.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Bad {
            file: "(random)".into(),
            reason: "the system's random source failed".into(),
        })?;
    Ok(bytes)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = random_bytes::<16>()?;
    // Positive and without a leading zero byte: a well-formed 16-byte DER integer.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `len` characters of `[a-z0-9]`, from the system's random source.
fn random_text(len: usize) -> Result<String, PkiError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>()? {
            // 252 = 7 × 36: larger bytes are dropped so that every character is equally likely.
            if b < 252 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a secret file: 0600, whole or not at all ([`holdfast_core::durable::write_private`]),
/// then owned like its directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    holdfast_core::durable::write_private(path, bytes).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })?;
    keep_owner(path);
    Ok(())
}

/// A file written by root (`holdfast token` on the coordinator's host) goes to the owner of
/// its directory, so a coordinator running as its own user can still read it.
fn keep_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().and_then(|d| std::fs::metadata(d).ok()) else {
        return;
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.uid() != dir.uid() || meta.gid() != dir.gid() {
        if let Err(e) = std::os::unix::fs::chown(path, Some(dir.uid()), Some(dir.gid())) {
            tracing::warn!(
                "{}: cannot give it to the directory's owner: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn csr() -> String {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec!["anything".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn bootstrap_makes_private_files_once_and_a_server_chain() {
        let dir = tempdir();
        let pki = Pki::new(dir.join("pki"));
        let first = pki.bootstrap(&["coord.example".into()], NOW).unwrap();
        assert!(first.admin_token.is_some() && first.join_token.is_some());
        assert!(first.ca_hash.starts_with("sha256:") && first.ca_hash.len() == 7 + 64);
        for f in FIRST_START_FILES {
            let mode = std::fs::metadata(pki.path(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let mode = std::fs::metadata(pki.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let chain = std::fs::read_to_string(pki.path("server.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "server + CA");
        let second = pki.bootstrap(&[], NOW).unwrap();
        assert!(second.admin_token.is_none() && second.join_token.is_none());
        assert_eq!(second.ca_hash, first.ca_hash, "the CA is kept");
    }

    #[test]
    fn join_checks_the_token_and_binds_the_node_id() {
        let dir = tempdir();
        let pki = Pki::new(&dir);
        let boot = pki.bootstrap(&[], NOW).unwrap();
        let token = boot.join_token.unwrap();
        let (cert, ca) = pki.join(&token, "node-1", &csr(), NOW).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE") && ca.contains("BEGIN CERTIFICATE"));
        let der = x509_parser::pem::parse_x509_pem(cert.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(
            crate::tls::certificate_identities(&der),
            vec!["node-1", "node-1"]
        );
        // A second certificate for a live node id is refused; after revoking it is allowed.
        assert!(matches!(
            pki.join(&token, "node-1", &csr(), NOW),
            Err(JoinRefused::NodeTaken(_))
        ));
        let serial = serial_of_der(&der).unwrap();
        assert!(!pki.is_revoked(&serial).unwrap());
        assert!(pki.revoke_node("node-1").unwrap());
        assert!(pki.is_revoked(&serial).unwrap());
        pki.join(&token, "node-1", &csr(), NOW).unwrap();
        assert!(
            pki.is_revoked(&serial).unwrap(),
            "joining again keeps the old certificate revoked"
        );
        // Wrong secret, unknown id, malformed, expired, revoked tokens; bad ids; bad CSR.
        let (id, _) = token.split_once('.').unwrap();
        for bad in [
            format!("{id}.wrongsecret00000"),
            "zzzzzz.aaaa".into(),
            "nodot".into(),
            String::new(),
        ] {
            assert!(
                matches!(
                    pki.join(&bad, "node-2", &csr(), NOW),
                    Err(JoinRefused::Token)
                ),
                "{bad}"
            );
        }
        let short = pki
            .create_join_token(Duration::from_secs(60), "short", NOW)
            .unwrap();
        assert!(matches!(
            pki.join(&short, "node-3", &csr(), NOW + 61_000),
            Err(JoinRefused::Token)
        ));
        let (short_id, _) = short.split_once('.').unwrap();
        assert!(pki.revoke_join_token(short_id).unwrap());
        assert!(matches!(
            pki.join(&short, "node-3", &csr(), NOW),
            Err(JoinRefused::Token)
        ));
        for id in ["holdfast-coordinator", "a b", "", "x;rm -rf /"] {
            assert!(
                matches!(
                    pki.join(&token, id, &csr(), NOW),
                    Err(JoinRefused::NodeId(_))
                ),
                "{id:?}"
            );
        }
        assert!(matches!(
            pki.join(&token, "node-4", "garbage", NOW),
            Err(JoinRefused::Csr(_))
        ));
        let uses = pki
            .join_tokens()
            .unwrap()
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .uses;
        assert_eq!(uses, 2);
    }

    #[test]
    fn certificates_issued_here_follow_the_join_rules() {
        let dir = tempdir();
        let pki = Pki::new(&dir);
        pki.bootstrap(&[], NOW).unwrap();
        let ids: Vec<String> = ["a-1", "a-2"].map(String::from).to_vec();
        let issued = pki.issue_here(&ids, NOW).unwrap();
        assert_eq!(issued.len(), 2);
        let der = x509_parser::pem::parse_x509_pem(issued[1].0.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(crate::tls::certificate_identities(&der), vec!["a-2", "a-2"]);
        assert!(issued[1].1.contains("PRIVATE KEY"));
        assert_eq!(pki.issued().unwrap().len(), 2);
        assert!(matches!(
            pki.issue_here(&ids[..1], NOW),
            Err(JoinRefused::NodeTaken(_))
        ));
        let reserved = [COORDINATOR_NAME.to_string()];
        assert!(matches!(
            pki.issue_here(&reserved, NOW),
            Err(JoinRefused::NodeId(_))
        ));
    }

    pub(super) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "holdfast-pki-{}-{}",
            std::process::id(),
            random_text(8).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
