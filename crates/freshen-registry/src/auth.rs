//! Registry credentials as Kubernetes hands them out: `dockerconfigjson`
//! pull secrets, keyed by registry host.
//!
//! Parsing is pure; the controller reads the Secrets a workload names (its
//! own `imagePullSecrets` and its ServiceAccount's) and passes the merged
//! [`Keychain`] to each look-up.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    /// The username.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials by registry host (`host[:port]`, Docker Hub as `docker.io`),
/// with the pull secret each came from, so that a refusal can name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keychain {
    entries: BTreeMap<String, Credential>,
    /// The pull secret each entry came from.
    sources: BTreeMap<String, String>,
    /// Every pull secret consulted, in order, readable or not.
    consulted: Vec<String>,
    /// The consulted pull secrets that could not be read or parsed.
    unreadable: Vec<String>,
}

impl Keychain {
    /// Marks every entry as coming from the pull secret `name`.
    #[must_use]
    pub fn from_secret(mut self, name: &str) -> Self {
        for registry in self.entries.keys() {
            self.sources.insert(registry.clone(), name.to_owned());
        }
        self
    }

    /// Notes that the pull secret `name` was consulted (whether or not it
    /// could be read).
    pub fn consulted(&mut self, name: &str) {
        if !self.consulted.iter().any(|n| n == name) {
            self.consulted.push(name.to_owned());
        }
    }

    /// Notes that the consulted pull secret `name` could not be used (not
    /// found, not readable, not a docker config).
    pub fn unusable(&mut self, name: &str) {
        self.consulted(name);
        if !self.unreadable.iter().any(|n| n == name) {
            self.unreadable.push(name.to_owned());
        }
    }

    /// Why a registry refused: which pull secret's credentials it was
    /// shown, or that no consulted pull secret holds any for it.
    pub fn refusal_hint(&self, registry: &str) -> String {
        let registry = normalize_host(registry);
        if self.entries.contains_key(&registry) {
            return match self.sources.get(&registry) {
                Some(secret) => {
                    format!("the credentials for {registry} in pull secret {secret} were refused")
                }
                None => format!("the credentials for {registry} were refused"),
            };
        }
        if !self.unreadable.is_empty() {
            return format!(
                "freshen could not use the pull secret{} {} (see PullSecretUnusable), and no \
                 other holds credentials for {registry}",
                if self.unreadable.len() == 1 { "" } else { "s" },
                self.unreadable.join(", ")
            );
        }
        match self.consulted.as_slice() {
            [] => format!(
                "the workload names no pull secret (pod spec or ServiceAccount imagePullSecrets) \
                 with credentials for {registry}"
            ),
            [one] => format!("the pull secret {one} has no credentials for {registry}"),
            many => format!(
                "none of the pull secrets {} has credentials for {registry}",
                many.join(", ")
            ),
        }
    }

    /// The credential for `registry`, if any.
    pub fn get(&self, registry: &str) -> Option<&Credential> {
        self.entries.get(registry)
    }

    /// Adds the entries of `other` whose registries this one lacks: the
    /// first secret that names a registry wins, as with the kubelet.
    pub fn merge(&mut self, other: Keychain) {
        for (registry, credential) in other.entries {
            if !self.entries.contains_key(&registry) {
                if let Some(source) = other.sources.get(&registry) {
                    self.sources.insert(registry.clone(), source.clone());
                }
                self.entries.insert(registry, credential);
            }
        }
        for name in other.consulted {
            self.consulted(&name);
        }
        for name in other.unreadable {
            self.unusable(&name);
        }
    }

    /// Whether it holds no credential.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one entry.
    pub fn insert(&mut self, registry: &str, credential: Credential) {
        self.entries.insert(normalize_host(registry), credential);
    }
}

/// A pull secret that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The secret's `.dockerconfigjson` is not the expected JSON.
    #[error("not a docker config ({{\"auths\": {{\"<registry>\": {{\"auth\": ...}}}}}}): {0}")]
    Json(String),
    /// An `auth` value is not base64 of `username:password`.
    #[error("the entry for {registry} has an auth value that is not base64 of username:password")]
    Auth {
        /// The registry of the entry.
        registry: String,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Parses the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson`
/// Secret (or `config.json`). Entries without credentials are skipped.
pub fn parse_docker_config(json: &[u8]) -> Result<Keychain, AuthError> {
    let config: DockerConfig =
        serde_json::from_slice(json).map_err(|e| AuthError::Json(e.to_string()))?;
    let mut keychain = Keychain::default();
    for (registry, entry) in config.auths {
        let credential = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let invalid = || AuthError::Auth {
                    registry: registry.clone(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| invalid())?;
                let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
                let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
                Credential {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            }
            (_, Some(username), Some(password)) => Credential { username, password },
            _ => continue,
        };
        keychain.insert(&registry, credential);
    }
    Ok(keychain)
}

/// A docker config key as the registry host an image reference names:
/// scheme and path dropped, Docker Hub's aliases as `docker.io`.
pub fn normalize_host(key: &str) -> String {
    let host = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_pull_secret_tried_or_missing() {
        let credential = || Credential {
            username: "u".into(),
            password: "p".into(),
        };
        let mut none = Keychain::default();
        assert_eq!(
            none.refusal_hint("reg.io"),
            "the workload names no pull secret (pod spec or ServiceAccount imagePullSecrets) \
             with credentials for reg.io"
        );
        none.consulted("other");
        assert_eq!(
            none.refusal_hint("reg.io"),
            "the pull secret other has no credentials for reg.io"
        );
        let mut shown = Keychain::default();
        shown.insert("reg.io", credential());
        let mut merged = Keychain::default();
        merged.consulted("regcred");
        merged.merge(shown.from_secret("regcred"));
        assert_eq!(
            merged.refusal_hint("reg.io"),
            "the credentials for reg.io in pull secret regcred were refused"
        );
        let mut unreadable = Keychain::default();
        unreadable.unusable("regcred");
        unreadable.consulted("other");
        assert_eq!(
            unreadable.refusal_hint("reg.io"),
            "freshen could not use the pull secret regcred (see PullSecretUnusable), and no \
             other holds credentials for reg.io"
        );
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_auth_and_username_password_entries() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.example.com:5000": {{"username": "ci", "password": "p:w"}},
                "ghcr.io": {{}}
            }}}}"#,
            b64("alice:s3cr:et")
        );
        let keychain = parse_docker_config(json.as_bytes()).unwrap_or_default();
        assert_eq!(
            keychain.get("docker.io"),
            Some(&Credential {
                username: "alice".into(),
                password: "s3cr:et".into()
            })
        );
        assert_eq!(
            keychain
                .get("registry.example.com:5000")
                .map(|c| c.username.as_str()),
            Some("ci")
        );
        assert_eq!(keychain.get("ghcr.io"), None, "no credentials, no entry");
    }

    #[test]
    fn bad_secrets_say_what_is_wrong() {
        assert!(matches!(
            parse_docker_config(b"{\"auths\": []}"),
            Err(AuthError::Json(_))
        ));
        let err = parse_docker_config(br#"{"auths": {"r.io": {"auth": "!!!"}}}"#);
        assert_eq!(
            err,
            Err(AuthError::Auth {
                registry: "r.io".into()
            })
        );
        let no_colon = format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, b64("alice"));
        assert!(parse_docker_config(no_colon.as_bytes()).is_err());
    }

    #[test]
    fn the_first_secret_naming_a_registry_wins() {
        let mut first = Keychain::default();
        first.insert(
            "r.io",
            Credential {
                username: "a".into(),
                password: "1".into(),
            },
        );
        let mut second = Keychain::default();
        second.insert(
            "r.io",
            Credential {
                username: "b".into(),
                password: "2".into(),
            },
        );
        second.insert(
            "s.io",
            Credential {
                username: "c".into(),
                password: "3".into(),
            },
        );
        first.merge(second);
        assert_eq!(first.get("r.io").map(|c| c.username.as_str()), Some("a"));
        assert_eq!(first.get("s.io").map(|c| c.username.as_str()), Some("c"));
    }

    #[test]
    fn passwords_never_reach_logs() {
        let c = Credential {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
