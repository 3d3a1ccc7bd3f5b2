//! Connecting to the coordinator's operator API.

use std::time::Duration;

use holdfast_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::transport::Channel;

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

fn endpoint(url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("bad coordinator address {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true))
}

/// Connects to the operator API, with a clear error when nothing answers. With several
/// addresses (HA: only the leader listens) the first that answers is the leader.
pub async fn connect(addr: &str) -> anyhow::Result<OperatorServiceClient<Channel>> {
    let mut errors = Vec::new();
    for url in normalize(addr).split(',') {
        match endpoint(url)?.connect().await {
            Ok(channel) => return Ok(OperatorServiceClient::new(channel)),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    anyhow::bail!(
        "cannot reach the coordinator at {} (is `holdfast coordinator` running?)",
        errors.join("; ")
    )
}
