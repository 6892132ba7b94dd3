//! Image references and digests, parsed the way container runtimes resolve them.
//!
//! `nginx` means `docker.io/library/nginx:latest`; `localhost:5000/app` names a
//! registry with a port; `repo:tag@sha256:…` pins a digest while keeping the
//! tag for humans (and for freshen, which follows that tag). The grammar is the
//! one of the distribution reference spec: a first path component is a
//! registry when it contains a `.` or a `:`, or is `localhost`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The registry a reference without one resolves to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without tag or digest resolves to.
pub const DEFAULT_TAG: &str = "latest";
const MAX_TAG_LEN: usize = 128;
const MAX_NAME_LEN: usize = 255;

/// Why an image reference or digest does not parse. Each variant names the
/// part that is wrong and the form it should have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The reference is empty.
    #[error("image reference is empty")]
    Empty,
    /// The digest is not `<algorithm>:<hex>`.
    #[error("digest {0:?} is not of the form sha256:<64 hex digits> (or sha512:<128 hex digits>)")]
    Digest(String),
    /// The tag has characters or a length a tag cannot have.
    #[error("tag {0:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    /// The repository path is malformed.
    #[error(
        "repository {0:?} must be lowercase path components of [a-z0-9] joined by '/', \
         with '.', '_', '__' or '-' inside a component"
    )]
    Repository(String),
    /// The registry host is malformed.
    #[error("registry {0:?} must be a host name or address with an optional :port")]
    Registry(String),
}

/// A content digest such as `sha256:3f…`; lowercase hex, length checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The full digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The algorithm part, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }

    /// The first 12 hex digits, as humans read digests.
    pub fn short(&self) -> &str {
        let hex = self.hex();
        &hex[..hex.len().min(12)]
    }
}

impl FromStr for Digest {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ImageRefError::Digest(s.to_owned());
        let (algorithm, hex) = s.split_once(':').ok_or_else(bad)?;
        let want = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(bad()),
        };
        if hex.len() != want
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageRefError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized image reference: registry, repository, and a tag, a digest or
/// both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageReference {
    /// Registry host with optional port, e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    /// The tag, if the reference names one.
    pub tag: Option<String>,
    /// The pinned digest, if the reference names one.
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses a reference as a pod spec would carry it.
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        s.parse()
    }

    /// `registry/repository`: the image without tag or digest. This is the
    /// `image` label of freshen's metrics (bounded: no tags, no digests).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag to follow: the named tag, else `latest` when no digest is
    /// pinned either; `None` for a digest-only reference.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }

    /// The same image without its pinned digest: what its tag names.
    pub fn without_digest(&self) -> Self {
        Self {
            digest: None,
            ..self.clone()
        }
    }

    /// The same image pinned to `digest`, keeping the tag for readers.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl FromStr for ImageReference {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag is the part after the last ':' that comes after the last '/';
        // an earlier ':' belongs to the registry's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let (registry, repository) = split_registry(name);
        validate_registry(&registry)?;
        validate_repository(&repository)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ImageRefError::Repository(repository));
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn split_registry(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            let registry = match first {
                "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
                other => other,
            };
            let repository = if registry == DEFAULT_REGISTRY && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_owned()
            };
            (registry.to_owned(), repository)
        }
        Some(_) => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        None => (DEFAULT_REGISTRY.to_owned(), format!("library/{name}")),
    }
}

fn validate_tag(tag: &str) -> Result<(), ImageRefError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ImageRefError::Tag(tag.to_owned()))
    }
}

fn validate_registry(registry: &str) -> Result<(), ImageRefError> {
    let bad = || ImageRefError::Registry(registry.to_owned());
    let (host, port) = match registry.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (registry, None),
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if host_ok { Ok(()) } else { Err(bad()) }
}

fn validate_repository(repository: &str) -> Result<(), ImageRefError> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        // Separators: '.', '_', '__', or one or more '-', always between
        // alphanumerics.
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            let run_start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[run_start..i];
            let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ImageRefError::Repository(repository.to_owned()))
    }
}

/// The digest a kubelet reports in `containerStatuses[].imageID`, when it is a
/// repository digest.
///
/// Runtimes report `repo@sha256:…` (containerd, CRI-O) or
/// `docker-pullable://repo@sha256:…` (dockershim). A bare `sha256:…` is the
/// local image (config) ID of an image that was never pulled by digest: it
/// does not name a manifest in any registry, so it yields `None` rather than a
/// guess.
pub fn digest_from_image_id(image_id: &str) -> Option<Digest> {
    let id = image_id
        .strip_prefix("docker-pullable://")
        .or_else(|| image_id.strip_prefix("docker://"))
        .unwrap_or(image_id);
    let (_, digest) = id.split_once('@')?;
    digest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn r(s: &str) -> ImageReference {
        match ImageReference::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn docker_hub_short_names_normalize() {
        let nginx = r("nginx");
        assert_eq!(nginx.registry, "docker.io");
        assert_eq!(nginx.repository, "library/nginx");
        assert_eq!(nginx.tag, None);
        assert_eq!(nginx.effective_tag(), Some("latest"));
        assert_eq!(r("bitnami/redis:7").repository, "bitnami/redis");
        assert_eq!(r("docker.io/nginx:1.27").repository, "library/nginx");
        assert_eq!(r("index.docker.io/library/nginx").registry, "docker.io");
        assert_eq!(r("nginx:1.27").to_string(), "docker.io/library/nginx:1.27");
    }

    #[test]
    fn registries_with_ports_and_localhost() {
        let a = r("localhost:5000/team/app:v1");
        assert_eq!(
            (a.registry.as_str(), a.repository.as_str()),
            ("localhost:5000", "team/app")
        );
        assert_eq!(a.tag.as_deref(), Some("v1"));
        let b = r("127.0.0.1:15000/app");
        assert_eq!(b.registry, "127.0.0.1:15000");
        assert_eq!(b.tag, None);
        let c = r("localhost/app");
        assert_eq!(c.registry, "localhost");
        let d = r("ghcr.io/org/sub/app:2.0.1-rc.1");
        assert_eq!(d.repository, "org/sub/app");
        assert_eq!(d.name(), "ghcr.io/org/sub/app");
        assert_eq!(r("[::1]:5000/app:v1").registry, "[::1]:5000");
    }

    #[test]
    fn tag_and_digest_together() {
        let x = r(&format!("registry.example.com:443/app:v2@{D}"));
        assert_eq!(x.tag.as_deref(), Some("v2"));
        assert_eq!(x.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(x.effective_tag(), Some("v2"));
        assert_eq!(
            x.to_string(),
            format!("registry.example.com:443/app:v2@{D}")
        );
        let y = r(&format!("app@{D}"));
        assert_eq!(y.tag, None);
        assert_eq!(y.effective_tag(), None);
        assert_eq!(
            y.with_digest(y.digest.clone().unwrap_or_else(|| unreachable!())),
            y
        );
    }

    #[test]
    fn malformed_references_name_the_bad_part() {
        assert_eq!(ImageReference::parse(""), Err(ImageRefError::Empty));
        assert!(matches!(
            ImageReference::parse("App:v1"),
            Err(ImageRefError::Repository(_))
        ));
        assert!(matches!(
            ImageReference::parse("app:-v1"),
            Err(ImageRefError::Tag(_))
        ));
        assert!(matches!(
            ImageReference::parse("app:"),
            Err(ImageRefError::Tag(_))
        ));
        assert!(matches!(
            ImageReference::parse("app@sha256:abc"),
            Err(ImageRefError::Digest(_))
        ));
        assert!(matches!(
            ImageReference::parse("app@md5:abc"),
            Err(ImageRefError::Digest(_))
        ));
        assert!(matches!(
            ImageReference::parse("host:99x/app"),
            Err(ImageRefError::Registry(_))
        ));
        assert!(matches!(
            ImageReference::parse("a//b"),
            Err(ImageRefError::Repository(_))
        ));
        assert!(matches!(
            ImageReference::parse("a/b_-c"),
            Err(ImageRefError::Repository(_))
        ));
        let msg = ImageReference::parse("app:-v1")
            .err()
            .map(|e| e.to_string());
        assert!(msg.is_some_and(|m| m.contains("-v1") && m.contains("[A-Za-z0-9_.-]")));
    }

    #[test]
    fn digests_are_validated() {
        let d: Digest = D.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.short(), "0123456789ab");
        assert!(
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
                .parse::<Digest>()
                .is_err()
        );
        assert!("sha256".parse::<Digest>().is_err());
    }

    #[test]
    fn image_ids_from_runtimes() {
        let want = D.parse().ok();
        assert_eq!(
            digest_from_image_id(&format!("docker.io/library/nginx@{D}")),
            want
        );
        assert_eq!(
            digest_from_image_id(&format!("docker-pullable://nginx@{D}")),
            want
        );
        assert_eq!(
            digest_from_image_id(&format!("127.0.0.1:15000/app:v1@{D}")),
            want
        );
        // A local image ID is a config digest, not a manifest: no guess.
        assert_eq!(digest_from_image_id(D), None);
        assert_eq!(digest_from_image_id(""), None);
        assert_eq!(digest_from_image_id("127.0.0.1:15000/app:v1"), None);
    }

    proptest! {
        #[test]
        fn display_round_trips(
            registry in prop_oneof![
                Just("docker.io".to_owned()),
                "[a-z][a-z0-9]{0,8}\\.[a-z]{2,4}(:[0-9]{2,5})?",
                Just("localhost:5000".to_owned()),
            ],
            repository in "[a-z0-9]{1,8}((\\.|_|__|-+)[a-z0-9]{1,8})?(/[a-z0-9]{1,8}){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of("[0-9a-f]{64}"),
        ) {
            let mut s = format!("{registry}/{repository}");
            if let Some(tag) = &tag { s.push(':'); s.push_str(tag); }
            if let Some(hex) = &digest { s.push_str("@sha256:"); s.push_str(hex); }
            let parsed = ImageReference::parse(&s);
            prop_assert!(parsed.is_ok(), "{s}: {parsed:?}");
            let parsed = parsed.unwrap_or_else(|_| unreachable!());
            let again = ImageReference::parse(&parsed.to_string());
            prop_assert_eq!(again.as_ref(), Ok(&parsed));
            prop_assert_eq!(parsed.tag, tag);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = ImageReference::parse(&s);
            let _ = digest_from_image_id(&s);
        }
    }
}
