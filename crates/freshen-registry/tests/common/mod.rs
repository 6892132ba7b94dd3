//! What the registry crate's loopback tests share: a client that speaks
//! plain HTTP to a test server and may reach loopback.

use std::sync::Arc;
use std::time::Duration;

use freshen_registry::{HostPattern, Reach, RegistryClient, RegistryConfig, RegistryMetrics};
use sha2::Digest as _;

/// A registry client for servers at `plain_http` on 127.0.0.1, with a
/// deadline of `timeout` per call.
pub fn loopback_client(plain_http: &[&str], timeout: Duration) -> Arc<RegistryClient> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = RegistryConfig::with_tag_ttl(Duration::from_secs(60));
    config.plain_http = plain_http.iter().map(|s| (*s).to_owned()).collect();
    config.timeout = Some(timeout);
    config.reach = Reach {
        allow: vec![HostPattern::Exact("127.0.0.1".into())],
        deny: vec![],
    };
    let metrics = match RegistryMetrics::new() {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    RegistryClient::new(config, metrics)
}

/// A listener on a free loopback port, and its `host:port`.
pub async fn bind_loopback() -> (tokio::net::TcpListener, String) {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    (listener, addr)
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}
