//! Leader election: one `coordination.k8s.io` Lease, so that of several
//! operator replicas one acts and the others stand by.
//!
//! The decision is `freshen_core::lease::claim`; this module reads and
//! writes the Lease, every write guarded by its resourceVersion. A standby
//! tries every retry period. The leader renews every retry period and gives
//! up (the process exits, to be restarted clean) when it has not renewed
//! for the renew deadline or sees someone else holding the Lease. It
//! releases the Lease on shutdown, so a standby takes over at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use freshen_api::time::to_micro_time;
use freshen_core::lease::{Claim, Holder, claim};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

/// How the election runs.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process's identity in the Lease (the pod's name, plus a
    /// per-process suffix outside a cluster).
    pub identity: String,
    /// A Lease not renewed for this long is taken over.
    pub lease_duration: Duration,
    /// The leader gives up when it has not renewed for this long; shorter
    /// than the lease duration, so it stops before anyone takes over.
    pub renew_deadline: Duration,
    /// How often a standby tries and the leader renews.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Settings derived from a lease duration the way client-go's defaults
    /// relate (15s, 10s, 2s).
    pub fn with_lease_duration(
        namespace: String,
        name: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration,
            renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
            retry_period: (lease_duration / 7).max(Duration::from_millis(200)),
        }
    }
}

/// Why the leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    /// Another process holds the Lease now.
    #[error("Lease {lease} is held by {holder} now")]
    TakenOver {
        /// namespace/name.
        lease: String,
        /// Its holder.
        holder: String,
    },
    /// Renewals failed for longer than the renew deadline.
    #[error("Lease {lease} not renewed for {elapsed:?} (last error: {error})")]
    NotRenewed {
        /// namespace/name.
        lease: String,
        /// Since the last successful renewal.
        elapsed: Duration,
        /// The last failure.
        error: String,
    },
}

/// What one attempt came to.
enum Attempt {
    /// We hold the Lease.
    Held,
    /// Someone else holds it.
    Other(String),
    /// Our write lost a race: try again.
    Retry(String),
    /// The API server did not answer, or failed: try again.
    Failed(String),
}

/// Whether the API server answers the Lease's reads and writes, for
/// `/readyz`: an outage (since when, and the last error) shows there while
/// it lasts, on the leader and on a standby alike.
#[derive(Debug, Clone, Default)]
pub struct ApiHealth(Arc<std::sync::Mutex<Option<(tokio::time::Instant, String)>>>);

impl ApiHealth {
    /// The API server failed a request sent at `sent` (`why`); the outage
    /// began with the first such request since the last answer.
    pub fn failed(&self, sent: tokio::time::Instant, why: &str) {
        if let Ok(mut outage) = self.0.lock() {
            let since = outage.as_ref().map_or(sent, |(since, _)| *since);
            *outage = Some((since, why.chars().take(256).collect()));
        }
    }

    /// The API server answered.
    pub fn answered(&self) {
        if let Ok(mut outage) = self.0.lock() {
            *outage = None;
        }
    }

    /// How long the API server has not answered, and its last error; `None`
    /// when it answered last.
    pub fn outage(&self) -> Option<(Duration, String)> {
        let outage = self.0.lock().ok()?;
        outage
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    fn saw(&self, sent: tokio::time::Instant, attempt: &Attempt) {
        match attempt {
            Attempt::Failed(why) => self.failed(sent, why),
            Attempt::Held | Attempt::Other(_) | Attempt::Retry(_) => self.answered(),
        }
    }
}

/// Takes part in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    /// The Lease's resourceVersion as last seen, and when (our clock): a
    /// record unchanged for its duration has expired.
    observed: std::sync::Mutex<Option<(String, DateTime<Utc>)>>,
    /// Where each attempt's answer (or its absence) is reported.
    health: ApiHealth,
}

impl Elector {
    /// An elector for `config`'s Lease.
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: std::sync::Mutex::new(None),
            health: ApiHealth::default(),
        }
    }

    /// Reports whether the API server answers each attempt to `health`.
    pub fn reporting_to(mut self, health: ApiHealth) -> Self {
        self.health = health;
        self
    }

    /// When this process first saw the Lease record `lease` (by its
    /// resourceVersion), by its own clock.
    fn observed_at(&self, lease: &Lease, now: DateTime<Utc>) -> DateTime<Utc> {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let Ok(mut seen) = self.observed.lock() else {
            return now;
        };
        match seen.as_ref() {
            Some((v, at)) if *v == version => *at,
            _ => {
                *seen = Some((version, now));
                now
            }
        }
    }

    /// One attempt, bounded: an API server that stalls must not keep a
    /// leader believing it leads past its renew deadline.
    async fn attempt_within(&self, limit: Duration) -> Attempt {
        let sent = tokio::time::Instant::now();
        let attempt = match tokio::time::timeout(limit, self.attempt()).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed(format!("no answer from the API server in {limit:?}")),
        };
        self.health.saw(sent, &attempt);
        attempt
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&self) {
        let mut said = None;
        loop {
            match self.attempt_within(self.config.renew_deadline).await {
                Attempt::Held => {
                    info!(lease = %self.lease_name(), identity = %self.config.identity, "leading");
                    return;
                }
                Attempt::Other(holder) => {
                    if said.as_ref() != Some(&holder) {
                        info!(lease = %self.lease_name(), %holder, "standing by");
                        said = Some(holder);
                    }
                }
                Attempt::Retry(why) | Attempt::Failed(why) => {
                    warn!(lease = %self.lease_name(), %why, "lease attempt failed")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Keeps the Lease; returns only when leadership is lost.
    pub async fn hold(&self) -> LeadershipLost {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let left = self
                .config
                .renew_deadline
                .saturating_sub(renewed.elapsed())
                .max(Duration::from_millis(100));
            match self.attempt_within(left).await {
                Attempt::Held => renewed = tokio::time::Instant::now(),
                Attempt::Other(holder) => {
                    return LeadershipLost::TakenOver {
                        lease: self.lease_name(),
                        holder,
                    };
                }
                Attempt::Retry(error) | Attempt::Failed(error) => {
                    let elapsed = renewed.elapsed();
                    warn!(lease = %self.lease_name(), %error, ?elapsed, "lease renewal failed");
                    if elapsed >= self.config.renew_deadline {
                        return LeadershipLost::NotRenewed {
                            lease: self.lease_name(),
                            elapsed,
                            error,
                        };
                    }
                }
            }
        }
    }

    /// Gives the Lease up if this process holds it, so a standby need not
    /// wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.lease_name(), "lease released"),
            Err(e) => warn!(lease = %self.lease_name(), error = %e, "lease not released"),
        }
    }

    async fn attempt(&self) -> Attempt {
        let current = match self.api.get_opt(&self.config.name).await {
            Ok(l) => l,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let now = Utc::now();
        let view = current.as_ref().map(|l| Holder {
            observed: Some(self.observed_at(l, now)),
            ..holder(l)
        });
        let decided = claim(view.as_ref(), &self.config.identity, now);
        let written = match decided {
            Claim::Wait(_) => {
                let holder = view.and_then(|v| v.identity).unwrap_or_default();
                return Attempt::Other(holder);
            }
            Claim::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, now, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Claim::Renew | Claim::TakeOver => {
                let Some(mut lease) = current else {
                    return Attempt::Retry("the Lease vanished".into());
                };
                let old = lease.spec.take().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                let spec = if decided == Claim::Renew {
                    self.spec(old.acquire_time, now, transitions)
                } else {
                    self.spec(None, now, transitions.saturating_add(1))
                };
                lease.spec = Some(spec);
                lease.metadata.managed_fields = None;
                // Guarded by the resourceVersion we read: of two standbys
                // taking over, one wins.
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Attempt::Held,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Attempt::Retry("another process wrote the Lease first".into())
            }
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// The Lease spec with this process holding it, renewed `now`.
    fn spec(&self, acquired: Option<MicroTime>, now: DateTime<Utc>, transitions: i32) -> LeaseSpec {
        let now = to_micro_time(now);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// The election's view of a Lease.
fn holder(lease: &Lease) -> Holder {
    let spec = lease.spec.clone().unwrap_or_default();
    Holder {
        identity: spec.holder_identity,
        renewed: spec
            .renew_time
            .or(spec.acquire_time)
            .and_then(|t| freshen_api::time::to_chrono(&t.0)),
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        ),
        observed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_lasts_from_the_first_failure_until_an_answer() {
        let health = ApiHealth::default();
        assert_eq!(health.outage(), None);
        health.saw(
            tokio::time::Instant::now(),
            &Attempt::Failed("connection refused".into()),
        );
        health.saw(
            tokio::time::Instant::now(),
            &Attempt::Failed("no answer from the API server in 2s".into()),
        );
        let (_, why) = health.outage().unwrap_or_default();
        assert_eq!(why, "no answer from the API server in 2s", "the last error");
        // A lost race is an answer: the API server is up.
        health.saw(
            tokio::time::Instant::now(),
            &Attempt::Retry("another process wrote the Lease first".into()),
        );
        assert_eq!(health.outage(), None);
        health.saw(
            tokio::time::Instant::now(),
            &Attempt::Failed("x".repeat(10_000).as_str().into()),
        );
        let (_, why) = health.outage().unwrap_or_default();
        assert_eq!(why.len(), 256, "bounded");
        health.saw(tokio::time::Instant::now(), &Attempt::Other("b".into()));
        assert_eq!(health.outage(), None);
    }

    #[test]
    fn a_lease_reads_as_its_holder_and_renewal() {
        let t = DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(to_micro_time(t)),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(
            holder(&lease),
            Holder {
                identity: Some("a".into()),
                renewed: Some(t),
                duration: Duration::from_secs(15),
                observed: None,
            }
        );
        assert_eq!(holder(&Lease::default()).identity, None);
    }

    #[test]
    fn timings_follow_client_go_proportions() {
        let c = LeaderConfig::with_lease_duration(
            "ns".into(),
            "l".into(),
            "me".into(),
            Duration::from_secs(15),
        );
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert!(c.retry_period >= Duration::from_secs(2) && c.retry_period < c.renew_deadline);
    }
}
