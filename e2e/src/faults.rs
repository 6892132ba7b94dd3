//! A fault-injecting front for the harness registry: every request is
//! passed to the real registry (one connection per request, asked to
//! close), and its answer is handed back as the registry gave it or broken
//! the way a [`Fault`] says: an error status with or without `Retry-After`,
//! no answer, a connection reset or closed mid-body, a wrong Content-Type,
//! content that does not match its digest, or a token service that never
//! grants or whose tokens expire early.
//!
//! The front keeps its own access log ([`FaultProxy::seen`]): when each
//! request arrived and what it was answered, so a test can prove what did
//! (and did not) reach "the registry" while a fault lasted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How the front breaks the registry's answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// None: every answer as the registry gave it.
    None,
    /// This status (with an OCI error envelope) instead of any answer.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` sent with it, if any.
        retry_after: Option<RetryAfter>,
    },
    /// The request is read and never answered (the connection stays open).
    Hang,
    /// Half the body, then a TCP reset (GETs; HEADs pass).
    ResetMidBody,
    /// The full Content-Length announced, half the body sent, then a clean
    /// close (GETs; HEADs pass).
    TruncatedBody,
    /// The answer's Content-Type replaced with this one.
    ContentType(String),
    /// One byte of a GET's body changed (length kept): content that no
    /// longer matches its digest.
    CorruptBody,
    /// Requests need a Bearer token, and the token service answers 401
    /// forever.
    TokenRefused,
    /// Requests need a Bearer token; the token service grants them,
    /// announcing `advertised` seconds of life, but the front refuses each
    /// after `lifetime`.
    ShortToken {
        /// How long a token really lasts.
        lifetime: Duration,
        /// The `expires_in` the token answer gives.
        advertised: u64,
    },
}

/// A `Retry-After` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP date>`, this many seconds from the answer.
    DateIn(u64),
}

impl RetryAfter {
    fn header(self) -> String {
        match self {
            Self::Seconds(s) => s.to_string(),
            Self::DateIn(s) => {
                let at = chrono::Utc::now() + chrono::TimeDelta::seconds(s as i64);
                at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
            }
        }
    }
}

/// One request the front received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// `HEAD`, `GET`, ...
    pub method: String,
    /// The request path (and query).
    pub path: String,
    /// The status answered; `None` when none was (a hang, a reset).
    pub status: Option<u16>,
}

/// A canned answer served for one request path, before any fault.
#[derive(Debug, Clone)]
pub struct Canned {
    /// Status code.
    pub status: u16,
    /// Headers, besides Content-Length and Connection.
    pub headers: Vec<(String, String)>,
    /// Body (not sent to a HEAD).
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    seen: Vec<Seen>,
    canned: HashMap<String, Canned>,
    /// Tokens granted, and until when the front honours each.
    tokens: HashMap<String, Instant>,
    granted: u64,
}

/// The running front; it serves until the process ends.
#[derive(Clone)]
pub struct FaultProxy {
    /// `127.0.0.1:<port>`: the registry host images name to go through it.
    pub addr: String,
    upstream: String,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Starts a front for the registry at `upstream` (`host:port`, plain
    /// HTTP), with no fault.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?.to_string(),
            upstream: upstream.to_owned(),
            state: Arc::default(),
        };
        let serving = proxy.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let front = serving.clone();
                tokio::spawn(async move { front.serve(stream).await });
            }
        });
        Ok(proxy)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Breaks answers the way `fault` says, from the next request on.
    pub fn set(&self, fault: Fault) {
        self.state().fault = (fault != Fault::None).then_some(fault);
    }

    /// Serves `answer` to every request for `path` (e.g.
    /// `/v2/app/manifests/v1`), whatever the registry holds.
    pub fn can(&self, path: &str, answer: Canned) {
        self.state().canned.insert(path.to_owned(), answer);
    }

    /// Every request received so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// Requests received so far to the registry API (not the token
    /// service).
    pub fn api_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/v2/"))
            .collect()
    }

    /// Tokens the token service granted so far.
    pub fn tokens_granted(&self) -> u64 {
        self.state().granted
    }

    fn log(&self, at: Instant, head: &Head, status: Option<u16>) {
        self.state().seen.push(Seen {
            at,
            method: head.method.clone(),
            path: head.path.clone(),
            status,
        });
    }

    async fn serve(&self, mut downstream: TcpStream) {
        let at = Instant::now();
        let Some((head, _)) = read_head(&mut downstream).await else {
            return;
        };
        let (fault, canned) = {
            let state = self.state();
            (state.fault.clone(), state.canned.get(&head.path).cloned())
        };
        if head.path.starts_with("/token") {
            let answer = self.token_answer(fault.as_ref());
            self.log(at, &head, Some(answer.status));
            write_answer(&mut downstream, &head, &answer).await;
            return;
        }
        if let Some(answer) = self.token_challenge(fault.as_ref(), &head) {
            self.log(at, &head, Some(answer.status));
            write_answer(&mut downstream, &head, &answer).await;
            return;
        }
        match fault {
            Some(Fault::Status { code, retry_after }) => {
                let mut headers = vec![("Content-Type".into(), "application/json".into())];
                if let Some(wait) = retry_after {
                    headers.push(("Retry-After".into(), wait.header()));
                }
                let body =
                    format!(r#"{{"errors":[{{"code":"FAULT","message":"injected {code}"}}]}}"#);
                self.log(at, &head, Some(code));
                let answer = Canned {
                    status: code,
                    headers,
                    body: body.into_bytes(),
                };
                write_answer(&mut downstream, &head, &answer).await;
                return;
            }
            Some(Fault::Hang) => {
                self.log(at, &head, None);
                // Holds the connection open, unanswered, until the client
                // gives up and closes it.
                let mut sink = [0u8; 1024];
                while let Ok(n) = downstream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
            _ => {}
        }
        let answer = match canned {
            Some(answer) => answer,
            None => match self.forward(&head).await {
                Some(answer) => answer,
                None => {
                    self.log(at, &head, Some(502));
                    let bad = Canned {
                        status: 502,
                        headers: Vec::new(),
                        body: Vec::new(),
                    };
                    write_answer(&mut downstream, &head, &bad).await;
                    return;
                }
            },
        };
        self.break_answer(fault, at, &head, answer, downstream)
            .await;
    }

    /// Hands `answer` back, broken as `fault` says.
    async fn break_answer(
        &self,
        fault: Option<Fault>,
        at: Instant,
        head: &Head,
        mut answer: Canned,
        mut downstream: TcpStream,
    ) {
        let has_body = head.method != "HEAD" && !answer.body.is_empty();
        match fault {
            Some(Fault::ResetMidBody | Fault::TruncatedBody) if has_body => {
                let reset = fault == Some(Fault::ResetMidBody);
                self.log(at, head, None);
                let half = answer.body.len() / 2;
                let mut bytes = status_and_headers(&answer, answer.body.len());
                bytes.extend_from_slice(&answer.body[..half]);
                if downstream.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = downstream.flush().await;
                if reset {
                    // Linger zero: closing sends RST, not FIN. (Deprecated
                    // because a non-zero linger blocks on drop; zero does
                    // not, and it is the only way to reset a connection.)
                    #[allow(deprecated)]
                    let _ = downstream.set_linger(Some(Duration::ZERO));
                } else {
                    let _ = downstream.shutdown().await;
                }
                return;
            }
            Some(Fault::ContentType(ref media)) => {
                answer
                    .headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
                answer.headers.push(("Content-Type".into(), media.clone()));
            }
            Some(Fault::CorruptBody) if has_body => {
                let middle = answer.body.len() / 2;
                answer.body[middle] ^= 0x01;
            }
            _ => {}
        }
        self.log(at, head, Some(answer.status));
        write_answer(&mut downstream, head, &answer).await;
    }

    /// The token service's answer: 401 when tokens are refused, else a
    /// fresh token.
    fn token_answer(&self, fault: Option<&Fault>) -> Canned {
        let json = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        match fault {
            Some(Fault::ShortToken {
                lifetime,
                advertised,
            }) => {
                let mut state = self.state();
                state.granted += 1;
                let token = format!("token-{}", state.granted);
                state.tokens.insert(token.clone(), Instant::now() + *lifetime);
                Canned {
                    status: 200,
                    headers: json,
                    body: format!(r#"{{"token":"{token}","expires_in":{advertised}}}"#)
                        .into_bytes(),
                }
            }
            _ => Canned {
                status: 401,
                headers: json,
                body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"injected: no token for you"}]}"#
                    .to_vec(),
            },
        }
    }

    /// A 401 challenge when the fault asks for tokens and the request has
    /// none the front still honours.
    fn token_challenge(&self, fault: Option<&Fault>, head: &Head) -> Option<Canned> {
        if !matches!(fault, Some(Fault::TokenRefused | Fault::ShortToken { .. })) {
            return None;
        }
        let presented = head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let valid = presented.is_some_and(|t| {
            self.state()
                .tokens
                .get(&t)
                .is_some_and(|until| *until > Instant::now())
        });
        if valid {
            return None;
        }
        let realm = format!("http://{}/token", self.addr);
        Some(Canned {
            status: 401,
            headers: vec![
                (
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="{realm}",service="fault-front""#),
                ),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .to_vec(),
        })
    }

    /// The registry's answer to `head`, read whole (its connection closes
    /// after it); `None` when it could not be had.
    async fn forward(&self, head: &Head) -> Option<Canned> {
        let mut upstream = TcpStream::connect(&self.upstream).await.ok()?;
        let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.path);
        for (k, v) in &head.headers {
            if ["connection", "authorization", "host"].contains(&k.to_ascii_lowercase().as_str()) {
                continue;
            }
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!(
            "Host: {}\r\nConnection: close\r\n\r\n",
            self.upstream
        ));
        upstream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        upstream.read_to_end(&mut raw).await.ok()?;
        parse_answer(&raw, head.method == "HEAD")
    }
}

/// A request's first line and headers.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request head (registry requests carry no body).
async fn read_head(stream: &mut TcpStream) -> Option<(Head, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if raw.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some((
        Head {
            method,
            path,
            headers,
        },
        raw[end + 4..].to_vec(),
    ))
}

/// A whole HTTP/1.1 answer (read to its close) as status, headers and
/// body, de-chunked.
fn parse_answer(raw: &[u8], head_only: bool) -> Option<Canned> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = raw[end + 4..].to_vec();
    if chunked && !head_only {
        body = dechunk(&body)?;
    }
    if head_only {
        // A HEAD's Content-Length is the GET's: kept as the registry sent
        // it.
        body.clear();
        headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("transfer-encoding")
        });
    } else {
        headers.retain(|(k, _)| {
            !["content-length", "connection", "transfer-encoding"]
                .contains(&k.to_ascii_lowercase().as_str())
        });
    }
    Some(Canned {
        status,
        headers,
        body,
    })
}

/// A chunked body's content.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The status line and headers of `answer`, announcing `length` bytes.
fn status_and_headers(answer: &Canned, length: usize) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {} {}\r\n", answer.status, reason(answer.status));
    let mut has_length = false;
    for (k, v) in &answer.headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        text.push_str(&format!("Content-Length: {length}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

/// Writes `answer` whole (no body to a HEAD) and closes.
async fn write_answer(stream: &mut TcpStream, head: &Head, answer: &Canned) {
    let mut bytes = status_and_headers(answer, answer.body.len());
    if head.method != "HEAD" {
        bytes.extend_from_slice(&answer.body);
    }
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `sha256:<hex>` of `bytes`, for canned content served by digest.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_read_whole() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: a/b\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let answer = parse_answer(raw, false);
        assert_eq!(
            answer.as_ref().map(|a| (a.status, a.body.clone())),
            Some((200, b"Wikipedia".to_vec()))
        );
        assert_eq!(
            answer.map(|a| a.headers),
            Some(vec![("Content-Type".to_owned(), "a/b".to_owned())])
        );
    }

    #[test]
    fn a_head_answer_keeps_its_length_and_has_no_body() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 528\r\nDocker-Content-Digest: sha256:ab\r\n\r\n";
        let answer = parse_answer(raw, true);
        assert_eq!(answer.as_ref().map(|a| a.body.len()), Some(0));
        assert_eq!(answer.map(|a| a.headers.len()), Some(2));
    }

    #[test]
    fn retry_after_dates_are_http_dates() {
        let text = RetryAfter::DateIn(30).header();
        assert!(text.ends_with(" GMT"), "{text}");
        assert!(
            chrono::DateTime::parse_from_rfc2822(&text).is_ok(),
            "{text}"
        );
    }
}
