//! Connecting to the coordinator's operator API.

use std::time::Duration;

use holdfast_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::transport::Channel;

/// The coordinator address the CLI uses when none is given.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// `host:port` or a full URL → a URL tonic can dial.
pub fn normalize(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Connects to the operator API, with a clear error when nothing answers.
pub async fn connect(addr: &str) -> anyhow::Result<OperatorServiceClient<Channel>> {
    let url = normalize(addr);
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("bad coordinator address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: {e} (is `holdfast coordinator` running?)"
        )
    })?;
    Ok(OperatorServiceClient::new(channel))
}
