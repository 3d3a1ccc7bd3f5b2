//! Connecting to the coordinator's operator API, with the operator's bearer token on every
//! call when one is given (`--token` / `HOLDFAST_TOKEN`).

use std::sync::OnceLock;
use std::time::Duration;

use holdfast_proto::v1 as pb;
use holdfast_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// An operator API client that sends the token (if any) with every call.
pub type Client = OperatorServiceClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to each request; adds nothing without a token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The header value for `token`; a token a header cannot carry is an error.
    pub fn new(token: Option<&str>) -> anyhow::Result<BearerToken> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(BearerToken(None));
        };
        let value = format!("Bearer {token}").parse().map_err(|_| {
            anyhow::anyhow!("--token / HOLDFAST_TOKEN: only printable ASCII can be sent as a token")
        })?;
        Ok(BearerToken(Some(value)))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The token of this process, set once by `main` from `--token` / `HOLDFAST_TOKEN`. Kept here
/// rather than passed along so that every command, and the reconnects of `follow`, use it
/// without each call site carrying it.
static TOKEN: OnceLock<String> = OnceLock::new();

/// Sets the token [`connect`] sends; only the first call counts.
pub fn set_token(token: &str) {
    let _ = TOKEN.set(token.to_string());
}

/// The CA file `https://` coordinator addresses are verified with, set once by `main` from
/// `--ca-cert` / `HOLDFAST_CA_CERT`.
static CA_CERT: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Sets the CA file [`connect`] trusts; only the first call counts.
pub fn set_ca_cert(path: &std::path::Path) {
    let _ = CA_CERT.set(path.to_path_buf());
}

/// The coordinator address the CLI uses when none is given.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// `host:port` or a full URL → a URL tonic can dial; a comma-separated list (several
/// coordinators) is normalized address by address.
pub fn normalize(addr: &str) -> String {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.starts_with("http://") || a.starts_with("https://") {
                a.to_string()
            } else {
                format!("http://{a}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<tonic::transport::Endpoint> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("bad coordinator address {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let Some(ca) = ca_pem else {
        anyhow::bail!(
            "{url}: https:// needs --ca-cert / HOLDFAST_CA_CERT (the CA that signed the \
             coordinator's certificate)"
        );
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    endpoint
        .tls_config(tls)
        .map_err(|e| anyhow::anyhow!("{url}: TLS settings: {e}"))
}

/// Connects to the operator API with this process's token (see [`set_token`]), with a clear
/// error when nothing answers. With several addresses (HA: only the leader listens) the first
/// that answers is the leader.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let ca = match CA_CERT.get() {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("--ca-cert / HOLDFAST_CA_CERT {}: {e}", path.display())
        })?),
        None => None,
    };
    connect_with(addr, TOKEN.get().map(String::as_str), ca.as_deref()).await
}

/// [`connect`] sending `token` (none: no `authorization` header), over plain TCP.
pub async fn connect_with_token(addr: &str, token: Option<&str>) -> anyhow::Result<Client> {
    connect_with(addr, token, None).await
}

/// [`connect`] sending `token` and verifying `https://` coordinators with the CA in `ca_pem`.
pub async fn connect_with(
    addr: &str,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<Client> {
    let bearer = BearerToken::new(token)?;
    let mut errors = Vec::new();
    for url in normalize(addr).split(',') {
        match endpoint(url, ca_pem)?.connect().await {
            Ok(channel) => {
                return Ok(OperatorServiceClient::with_interceptor(
                    channel,
                    bearer.clone(),
                ))
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    anyhow::bail!(
        "cannot reach the coordinator at {} (is `holdfast coordinator` running?)",
        errors.join("; ")
    )
}

/// The incidents recorded for `job_id` (every job's when empty). A refusal stays a
/// `tonic::Status` in the error's chain, for [`auth_hint`].
pub async fn incidents(client: &mut Client, job_id: &str) -> anyhow::Result<Vec<pb::Incident>> {
    let request = pb::ListIncidentsRequest {
        job_id: job_id.to_string(),
        ..Default::default()
    };
    let answer = client
        .list_incidents(request)
        .await
        .map_err(|s| anyhow::anyhow!("cannot list incidents: {}", s.message()))?;
    Ok(answer.into_inner().incidents)
}

/// The operator's next step when the coordinator refused the call for want of a (valid) token
/// or role; `None` for any other error.
pub fn auth_hint(error: &anyhow::Error) -> Option<&'static str> {
    let status = error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())?;
    match status.code() {
        tonic::Code::Unauthenticated => Some(
            "this coordinator needs an operator API token: pass --token <token> or set HOLDFAST_TOKEN",
        ),
        tonic::Code::PermissionDenied => {
            Some("this needs a token with the operator role (see operator_tokens_file)")
        }
        _ => None,
    }
}
