//! Registry answers are input: a registry that sends more than it declared,
//! an endless body, or a byte a second gets an error within bounds, and the
//! operator's memory and time stay bounded.
//!
//! No real registry misbehaves on purpose, so this test runs a small
//! hostile HTTP server on loopback; the well-behaved paths are proved
//! against the real registry in the e2e suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use freshen_core::{Digest, ImageReference};
use freshen_registry::{MAX_CONFIG_BYTES, RegistryClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

/// How the config blob (or, for the `Manifest*` cases, the manifest) is
/// served.
#[derive(Clone, Copy, Debug)]
enum Blob {
    /// A manifest of 4 MiB + 1 byte.
    ManifestOverLimit,
    /// A manifest sent as an endless chunked body.
    ManifestEndless,
    /// A manifest whose digest is not the one asked for.
    ManifestWrongDigest,
    /// A 500 whose error body never ends.
    ErrorFlood,
    /// 200 bytes where the descriptor says 100.
    Liar,
    /// A chunked body of up to 10 GiB.
    Endless,
    /// One byte a second.
    Trickle,
}

fn sha(data: &[u8]) -> String {
    common::sha256(data)
}

/// The manifest served, with a config descriptor of 100 bytes.
fn manifest() -> Vec<u8> {
    let config = vec![b'{'; 100];
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(&config),
            "size": 100,
        },
        "layers": [],
    }))
    .unwrap_or_default()
}

async fn serve(listener: TcpListener, blob: Blob) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, blob));
    }
}

async fn answer(mut stream: TcpStream, blob: Blob) {
    let mut request = vec![0u8; 8192];
    let Ok(n) = stream.read(&mut request).await else {
        return;
    };
    let head = String::from_utf8_lossy(&request[..n]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let manifest = manifest();
    if path.contains("/manifests/") && head.starts_with("GET") {
        match blob {
            Blob::ManifestOverLimit => {
                let body = vec![b' '; 4 * 1024 * 1024 + 1];
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                return;
            }
            Blob::ManifestEndless => {
                endless(&mut stream, "200 OK").await;
                return;
            }
            Blob::ErrorFlood => {
                endless(&mut stream, "500 Internal Server Error").await;
                return;
            }
            Blob::ManifestWrongDigest => {
                let other = br#"{"schemaVersion":2,"config":{}}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    other.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(other).await;
                return;
            }
            _ => {}
        }
    }
    if path.contains("/manifests/") {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Docker-Content-Digest: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sha(&manifest),
            manifest.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        if head.starts_with("GET") {
            let _ = stream.write_all(&manifest).await;
        }
        return;
    }
    if !path.contains("/blobs/") {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    match blob {
        // The manifest already failed: no blob is asked for.
        Blob::ManifestOverLimit
        | Blob::ManifestEndless
        | Blob::ManifestWrongDigest
        | Blob::ErrorFlood => {}
        Blob::Liar => {
            let body = vec![b'{'; 200];
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        }
        Blob::Endless => endless(&mut stream, "200 OK").await,
        Blob::Trickle => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
                .await;
            // At most a minute; stops when the client hangs up.
            for _ in 0..60 {
                if stream.write_all(b"{").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A chunked body of up to 10 GiB; stops as soon as the client hangs up.
async fn endless(stream: &mut TcpStream, status: &str) {
    let head =
        format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let frame = [
        format!("{:x}\r\n", chunk.len()).into_bytes(),
        chunk,
        b"\r\n".to_vec(),
    ]
    .concat();
    for _ in 0..(10u64 << 30) / (64 * 1024) {
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

async fn registry_serving(blob: Blob) -> (Arc<RegistryClient>, ImageReference, Digest) {
    let (listener, addr) = common::bind_loopback().await;
    tokio::spawn(serve(listener, blob));
    let client = common::loopback_client(&[&addr], Duration::from_secs(3));
    let image = match ImageReference::parse(&format!("{addr}/hostile/app:1")) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    };
    let digest = match sha(&manifest()).parse() {
        Ok(d) => d,
        Err(e) => panic!("{e:?}"),
    };
    (client, image, digest)
}

#[tokio::test]
async fn hostile_config_blobs_are_refused_within_bounds() {
    for (blob, what, needle) in [
        (
            Blob::Liar,
            "a config larger than its descriptor",
            "larger than 100 bytes",
        ),
        (
            Blob::Endless,
            "a 10 GiB chunked config",
            "larger than 100 bytes",
        ),
        (
            Blob::ManifestOverLimit,
            "a manifest of 4 MiB + 1",
            "over the 4194304-byte limit",
        ),
        (
            Blob::ManifestEndless,
            "a 10 GiB chunked manifest",
            "over the 4194304-byte limit",
        ),
        (
            Blob::ManifestWrongDigest,
            "a manifest that is not the digest asked for",
            "not the sha256:",
        ),
        (
            Blob::ErrorFlood,
            "a 500 with a 10 GiB error body",
            "500 (the registry failed) from",
        ),
        (Blob::Trickle, "a byte a second", "no complete answer from"),
    ] {
        let (client, image, digest) = registry_serving(blob).await;
        let started = Instant::now();
        let result = client.image_facts(&image, &digest, None, None).await;
        let took = started.elapsed();
        let Err(e) = result else {
            panic!("{what}: accepted");
        };
        let text = format!("{e:#}");
        let chain = std::iter::successors(Some(&*e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
        assert!(chain.contains(needle), "{what}: {text} / {chain}");
        assert!(
            took < Duration::from_secs(10),
            "{what}: took {took:?}, beyond the 3 s deadline"
        );
    }
    // The limit the descriptor may declare at all.
    assert_eq!(MAX_CONFIG_BYTES, 8 * 1024 * 1024);
}

#[tokio::test]
async fn a_retry_after_is_honoured_no_request_goes_before_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    let (listener, addr) = common::bind_loopback().await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            ASKED.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 8192];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let client = common::loopback_client(&[&addr], Duration::from_secs(30));
    let image = match ImageReference::parse(&format!("{addr}/busy/app:1")) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    };
    let first = client
        .resolve_tag(&image, None, tokio::time::Instant::now())
        .await;
    assert!(
        first
            .as_ref()
            .is_err_and(|e| e.category() == "registry_rate_limited"),
        "{first:?}"
    );
    let second = client
        .resolve_tag(&image, None, tokio::time::Instant::now())
        .await;
    let Err(e) = second else {
        panic!("asked again during Retry-After");
    };
    assert_eq!(e.category(), "registry_backoff", "{e}");
    // The registry's 120 s, not freshen's first backoff of about a second.
    let text = e.to_string();
    let seconds: u64 = text
        .split("next request in ")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches('s').parse().ok())
        .unwrap_or(0);
    assert!(seconds >= 100, "{text}");
    assert_eq!(ASKED.load(Ordering::SeqCst), 1, "one request, then none");
}
