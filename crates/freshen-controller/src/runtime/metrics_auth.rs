//! Authenticated `/metrics` (`--metrics-auth kubernetes`), as
//! controller-runtime's `WithAuthenticationAndAuthorization` filter does:
//! the scraper presents a bearer token, the API server says who it is (a
//! TokenReview) and whether that identity may `get` the non-resource URL
//! `/metrics` (a SubjectAccessReview). The metrics name every tenant's
//! workloads and images, so by default in the chart only identities bound
//! to the ClusterRole `freshen-metrics-reader` may read them.
//!
//! Decisions are kept for a minute per token (by its SHA-256, never the
//! token itself), at most [`MAX_CACHED`], so a scrape every 15 s costs the
//! API server two requests a minute; a failed review is not kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::Digest as _;

/// How long a decision is kept.
const KEEP: Duration = Duration::from_secs(60);
/// Decisions kept at most; past it, all are dropped.
const MAX_CACHED: usize = 1024;

/// What the reviews decided for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed.
    Allowed,
    /// No token, or the API server does not know it.
    Unauthenticated,
    /// Authenticated as this user, who may not read `/metrics`.
    Forbidden(String),
}

/// Reviews scrapers' tokens with the API server.
pub struct MetricsAuth {
    client: Client,
    decided: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

/// The token of an `Authorization` header value: `Bearer <token>`, the
/// scheme in any case; `None` for anything else or an empty token.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl MetricsAuth {
    /// Reviews through `client` (freshen's own identity, which the chart
    /// lets create TokenReviews and SubjectAccessReviews).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            decided: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict for the `Authorization` header `header`; an error when
    /// the API server could not be asked.
    pub async fn check(&self, header: Option<&str>) -> Result<Verdict, kube::Error> {
        let Some(token) = bearer(header) else {
            return Ok(Verdict::Unauthenticated);
        };
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Ok(decided) = self.decided.lock()
            && let Some((verdict, at)) = decided.get(&key)
            && now.duration_since(*at) < KEEP
        {
            return Ok(verdict.clone());
        }
        let verdict = self.review(token).await?;
        if let Ok(mut decided) = self.decided.lock() {
            if decided.len() >= MAX_CACHED {
                decided.clear();
            }
            decided.insert(key, (verdict.clone(), now));
        }
        Ok(verdict)
    }

    async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => return Ok(Verdict::Unauthenticated),
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(match decided.status.is_some_and(|s| s.allowed) {
            true => Verdict::Allowed,
            false => Verdict::Forbidden(user.username.unwrap_or_default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_read() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
