//! A credential goes only to its own registry, and for the token flow to a
//! realm freshen may send it to; redirects never carry it elsewhere.
//!
//! Recording HTTP servers on loopback play the registry, a foreign token
//! service and a redirect target, and remember every request and its
//! `Authorization` header.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_core::ImageReference;
use freshen_registry::{Credential, RegistryClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// One request a server saw: method, path, Authorization header.
type Seen = (String, String, Option<String>);

/// A server that answers with `reply(method, path, authorization)` and
/// records every request.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(reply: fn(&str, &str, Option<&str>, &str) -> String) -> Self {
        let (listener, addr) = common::bind_loopback().await;
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (record, me) = (Arc::clone(&seen), addr.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (record, me) = (Arc::clone(&record), me.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut words = head.split_whitespace();
                    let method = words.next().unwrap_or_default().to_owned();
                    let path = words.next().unwrap_or_default().to_owned();
                    let auth = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    });
                    if let Ok(mut r) = record.lock() {
                        r.push((method.clone(), path.clone(), auth.clone()));
                    }
                    let answer = reply(&method, &path, auth.as_deref(), &me);
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn http(status: &str, headers: &[(&str, String)], body: &str) -> String {
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        reply.push_str(&format!("{k}: {v}\r\n"));
    }
    reply.push_str("\r\n");
    reply.push_str(body);
    reply
}

fn digest_of(body: &str) -> String {
    common::sha256(body.as_bytes())
}

const SECRET: &str = "s3cret";

fn credential() -> Credential {
    Credential {
        username: "robot".into(),
        password: SECRET.into(),
    }
}

fn client(plain_http: &[&str]) -> Arc<RegistryClient> {
    common::loopback_client(plain_http, Duration::from_secs(5))
}

fn image(registry: &str) -> ImageReference {
    match ImageReference::parse(&format!("{registry}/team/app:1")) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

/// Resolves `<registry>/team/app:1` with the robot's credential.
async fn resolve_as_robot(
    client: &Arc<RegistryClient>,
    registry: &str,
) -> Result<freshen_core::Digest, Arc<freshen_registry::RegistryError>> {
    client
        .resolve_tag(
            &image(registry),
            Some(&credential()),
            tokio::time::Instant::now(),
        )
        .await
}

/// Whether any request seen carried the credential (Basic, base64 of
/// `robot:s3cret`).
fn carried_secret(seen: &[Seen]) -> bool {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("robot:{SECRET}"));
    seen.iter()
        .any(|(_, _, auth)| auth.as_deref().is_some_and(|a| a.contains(&basic)))
}

#[tokio::test]
async fn a_token_realm_over_http_on_another_host_never_gets_the_credential() {
    let foreign = Recorder::start(|_, _, _, _| http("200 OK", &[], r#"{"token":"stolen"}"#)).await;
    // The registry names the foreign service as its realm, over plain http.
    static REALM: Mutex<String> = Mutex::new(String::new());
    if let Ok(mut r) = REALM.lock() {
        *r = format!("http://{}/token", foreign.addr);
    }
    let registry = Recorder::start(|_, _, _, _| {
        let realm = REALM.lock().map(|r| r.clone()).unwrap_or_default();
        http(
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                format!(r#"Bearer realm="{realm}",service="x""#),
            )],
            "",
        )
    })
    .await;
    let client = client(&[&registry.addr]);
    let result = resolve_as_robot(&client, &registry.addr).await;
    let Err(e) = result else {
        panic!("resolved through a foreign realm");
    };
    assert_eq!(e.category(), "registry_realm_refused", "{e}");
    assert!(
        e.to_string()
            .contains("credentials go to token services only over https"),
        "{e}"
    );
    assert!(
        foreign.seen().is_empty(),
        "the foreign realm was asked: {:?}",
        foreign.seen()
    );
    assert!(
        !carried_secret(&registry.seen()),
        "no Basic to a Bearer registry"
    );
}

#[tokio::test]
async fn a_token_realm_at_a_refused_address_is_never_asked() {
    let registry = Recorder::start(|_, _, _, _| {
        http(
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                r#"Bearer realm="https://169.254.169.254/token""#.to_owned(),
            )],
            "",
        )
    })
    .await;
    let client = client(&[&registry.addr]);
    let e = resolve_as_robot(&client, &registry.addr)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("169.254.169.254") && e.contains("cloud metadata"),
        "{e}"
    );
}

#[tokio::test]
async fn the_token_flow_on_the_registrys_own_host_works_and_the_token_is_reused() {
    // One server is registry and token service: the credential goes to the
    // realm on the same plain-HTTP host, the token to the registry.
    let manifest = r#"{"schemaVersion":2}"#;
    let registry = Recorder::start(|method, path, auth, me| {
        if path.starts_with("/token") {
            return http("200 OK", &[], r#"{"token":"t0k3n","expires_in":300}"#);
        }
        if auth != Some("Bearer t0k3n") {
            return http(
                "401 Unauthorized",
                &[(
                    "WWW-Authenticate",
                    format!(r#"Bearer realm="http://{me}/token",service="reg""#),
                )],
                "",
            );
        }
        let body = r#"{"schemaVersion":2}"#;
        let digest = digest_of(body);
        if method == "HEAD" {
            http("200 OK", &[("Docker-Content-Digest", digest)], "")
        } else {
            http("200 OK", &[("Docker-Content-Digest", digest)], body)
        }
    })
    .await;
    let client = client(&[&registry.addr]);
    let digest = resolve_as_robot(&client, &registry.addr)
        .await
        .map(|d| d.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(digest, digest_of(manifest));
    let seen = registry.seen();
    let token_requests: Vec<_> = seen
        .iter()
        .filter(|(_, p, _)| p.starts_with("/token"))
        .collect();
    assert_eq!(token_requests.len(), 1, "{seen:?}");
    assert!(
        token_requests[0]
            .1
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{seen:?}"
    );
    assert!(
        carried_secret(&seen),
        "the realm on the registry's host got the credential"
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_drops_the_credential_and_one_to_metadata_is_refused() {
    let elsewhere = Recorder::start(|_, _, _, _| http("404 Not Found", &[], "")).await;
    static TARGET: Mutex<String> = Mutex::new(String::new());
    if let Ok(mut t) = TARGET.lock() {
        *t = format!("http://{}/moved", elsewhere.addr);
    }
    let registry = Recorder::start(|_, _, auth, _| {
        if auth.is_none() {
            return http(
                "401 Unauthorized",
                &[("WWW-Authenticate", r#"Basic realm="reg""#.to_owned())],
                "",
            );
        }
        let target = TARGET.lock().map(|t| t.clone()).unwrap_or_default();
        http("307 Temporary Redirect", &[("Location", target)], "")
    })
    .await;
    let client = client(&[&registry.addr]);
    let _ = resolve_as_robot(&client, &registry.addr).await;
    assert!(
        carried_secret(&registry.seen()),
        "Basic goes to the registry itself"
    );
    assert!(!elsewhere.seen().is_empty(), "the redirect was followed");
    assert!(
        !carried_secret(&elsewhere.seen()),
        "the credential left with the redirect: {:?}",
        elsewhere.seen()
    );

    if let Ok(mut t) = TARGET.lock() {
        *t = "http://169.254.169.254/latest/meta-data".into();
    }
    let e = resolve_as_robot(&client, &registry.addr)
        .await
        .err()
        .map(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
        .unwrap_or_default();
    assert!(e.contains("refused a redirect"), "{e}");
}
