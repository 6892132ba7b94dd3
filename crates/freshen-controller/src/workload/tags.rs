//! Since when each tag has named its digest: [`TagRecord`]s in freshen's
//! namespace, read from a watch and written once per change of digest, so
//! that "update available since", "base stale since" and the age of a
//! digest whose build time is unknown survive restarts and failovers.
//!
//! Tags are tenant input (a workload's images, its `freshen.dev/base-image`
//! annotation), so records are bounded (see [`freshen_core::tag_budget`]):
//! a new tag is recorded within a per-workload rate and per-namespace and
//! total caps, else answered from memory; records nothing has looked at
//! for the retention are deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use freshen_api::tag::{TagRecord, TagRecordSpec, legacy_record_name, record_name};
use freshen_core::Digest;
use freshen_core::tag_budget::{self, TagBudget, TagLimits};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::runtime::metrics::Metrics;
use crate::runtime::objects::FIELD_MANAGER;

/// Tags answered from memory (written but not yet seen by the watch, or
/// refused a record), at most: past it they are forgotten and start anew.
const MAX_PENDING: usize = 20_000;

/// The workload asking about a tag.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub workload: &'a str,
}

/// How records are bounded and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSettings {
    /// The caps and the rate of new tags.
    pub limits: TagLimits,
    /// A record nothing has looked at for this long is deleted.
    pub retention: Duration,
}

impl Default for TagSettings {
    fn default() -> Self {
        Self {
            limits: TagLimits::default(),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where records are kept, when they are.
struct Records {
    store: Store<TagRecord>,
    namespace: String,
    writes: mpsc::UnboundedSender<TagRecordSpec>,
    metrics: Arc<Metrics>,
    settings: TagSettings,
    started: DateTime<Utc>,
}

/// What the clock remembers besides the records.
#[derive(Default)]
struct Memory {
    /// Tag -> (digest, since), answered without a record.
    pending: HashMap<String, (String, DateTime<Utc>)>,
    /// Tag -> when a workload last asked about it (tags with a record).
    seen: HashMap<String, DateTime<Utc>>,
    /// New tags per workload.
    budget: TagBudget,
}

/// Answers since when a tag has named a digest.
pub struct TagClock {
    records: Option<Records>,
    memory: Mutex<Memory>,
}

impl TagClock {
    /// A clock that remembers for this process only (`freshen report`).
    pub fn in_memory() -> Self {
        Self {
            records: None,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// A clock that reads `store` (the records of `namespace`), writes new
    /// records through `client` from a spawned task, and deletes those
    /// nothing looks at from another.
    pub fn recorded(
        store: Store<TagRecord>,
        namespace: String,
        client: Client,
        metrics: Arc<Metrics>,
        settings: TagSettings,
    ) -> Arc<Self> {
        let (writes, rx) = mpsc::unbounded_channel();
        let clock = Arc::new(Self {
            records: Some(Records {
                store,
                namespace: namespace.clone(),
                writes,
                metrics,
                settings,
                started: Utc::now(),
            }),
            memory: Mutex::new(Memory::default()),
        });
        let api: Api<TagRecord> = Api::namespaced(client, &namespace);
        tokio::spawn(write(rx, api.clone(), Arc::downgrade(&clock)));
        tokio::spawn(sweep(api, Arc::downgrade(&clock)));
        clock
    }

    /// Since when `image` (`registry/repository:tag`) has named `digest`,
    /// as `origin` asks: as recorded, else `now`, which is then recorded
    /// when the bounds allow (else remembered in memory).
    pub fn since(
        &self,
        image: &str,
        digest: &Digest,
        now: DateTime<Utc>,
        origin: Origin<'_>,
    ) -> DateTime<Utc> {
        let digest = digest.to_string();
        let Ok(mut memory) = self.memory.lock() else {
            return now;
        };
        let mut existing = None;
        if let Some(r) = &self.records
            && let Some((record, legacy)) = r.find(image)
        {
            memory.seen.insert(image.to_owned(), now);
            if record.spec.digest == digest {
                if legacy && !memory.pending.contains_key(image) {
                    // Rewritten under its SHA-256 name; the sweep then
                    // deletes the old one.
                    memory
                        .pending
                        .insert(image.to_owned(), (digest, record.spec.since));
                    let _ = r.writes.send(record.spec.clone());
                }
                return record.spec.since.min(now);
            }
            existing = Some(record.spec.origin.clone());
        }
        if let Some((known, since)) = memory.pending.get(image)
            && *known == digest
        {
            return *since;
        }
        if memory.pending.len() >= MAX_PENDING {
            memory.pending.clear();
        }
        memory
            .pending
            .insert(image.to_owned(), (digest.clone(), now));
        let Some(r) = &self.records else {
            return now;
        };
        // A tag with a record that moved is rewritten; a new tag is
        // recorded only within the bounds.
        let origin_namespace = match existing {
            Some(origin) => origin,
            None => match r.admit(&mut memory.budget, origin, now) {
                Ok(()) => Some(origin.namespace.to_owned()),
                Err(refused) => {
                    r.metrics
                        .tag_records
                        .with_label_values(&[refused.label()])
                        .inc();
                    debug!(image, workload = %origin.workload, reason = refused.label(),
                           "new tag not recorded; answered from memory");
                    return now;
                }
            },
        };
        memory.seen.insert(image.to_owned(), now);
        let _ = r.writes.send(TagRecordSpec {
            image: image.to_owned(),
            digest,
            since: now,
            origin: origin_namespace,
        });
        now
    }

    /// Forgets a pending record whose write failed, so that the next look
    /// writes it again.
    fn unwritten(&self, spec: &TagRecordSpec) {
        if let Ok(mut memory) = self.memory.lock()
            && memory
                .pending
                .get(&spec.image)
                .is_some_and(|(d, _)| *d == spec.digest)
        {
            memory.pending.remove(&spec.image);
        }
    }
}

impl Records {
    /// The record of `image`: under its name, else under its legacy name
    /// (`true`), when it is that tag's.
    fn find(&self, image: &str) -> Option<(Arc<TagRecord>, bool)> {
        [
            (record_name(image), false),
            (legacy_record_name(image), true),
        ]
        .into_iter()
        .find_map(|(name, legacy)| {
            self.store
                .get(&ObjectRef::new(&name).within(&self.namespace))
                .filter(|r| r.spec.image == image)
                .map(|r| (r, legacy))
        })
    }

    /// Whether `origin` may have a new tag recorded now.
    fn admit(
        &self,
        budget: &mut TagBudget,
        origin: Origin<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), tag_budget::TagRefusal> {
        let workload = format!("{}/{}", origin.namespace, origin.workload);
        budget.admit(&self.settings.limits, &workload, now, || {
            let all = self.store.state();
            let mine = all
                .iter()
                .filter(|r| r.spec.origin.as_deref() == Some(origin.namespace))
                .count();
            (mine, all.len())
        })?;
        self.metrics
            .tag_records
            .with_label_values(&["recorded"])
            .inc();
        Ok(())
    }
}

/// Writes records as they come (server-side apply: one owner, the latest
/// digest wins).
async fn write(
    mut rx: mpsc::UnboundedReceiver<TagRecordSpec>,
    api: Api<TagRecord>,
    clock: Weak<TagClock>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    while let Some(spec) = rx.recv().await {
        let name = record_name(&spec.image);
        let record = TagRecord::new(&name, spec.clone());
        let mut value = serde_json::to_value(&record).unwrap_or_default();
        value["apiVersion"] = "freshen.dev/v1alpha1".into();
        value["kind"] = "TagRecord".into();
        match api.patch(&name, &params, &Patch::Apply(value)).await {
            Ok(_) => debug!(image = %spec.image, digest = %spec.digest, "tag record written"),
            Err(e) => {
                warn!(error = %e, image = %spec.image, "tag record not written; written at the next look");
                if let Some(clock) = clock.upgrade() {
                    clock.unwritten(&spec);
                }
            }
        }
    }
}

/// Deletes, every quarter of the retention (at most every 10 minutes),
/// records nothing has looked at for the retention, and records under a
/// name that is not their tag's (the FNV names of older versions, once
/// rewritten). Each delete is guarded by the uid and resourceVersion seen,
/// so a record written meanwhile stays.
async fn sweep(api: Api<TagRecord>, clock: Weak<TagClock>) {
    loop {
        let every = match clock.upgrade() {
            Some(clock) => match &clock.records {
                Some(r) => (r.settings.retention / 4)
                    .clamp(Duration::from_secs(1), Duration::from_secs(600)),
                None => return,
            },
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(clock) = clock.upgrade() else { return };
        let Some(r) = &clock.records else { return };
        let now = Utc::now();
        let doomed: Vec<Arc<TagRecord>> = {
            let Ok(memory) = clock.memory.lock() else {
                continue;
            };
            r.store
                .state()
                .into_iter()
                .filter(|record| {
                    let image = &record.spec.image;
                    let renamed = record.name_any() != record_name(image)
                        && r.find(image).is_some_and(|(_, legacy)| !legacy);
                    let seen = memory.seen.get(image).copied();
                    renamed || tag_budget::expired(seen, r.started, r.settings.retention, now)
                })
                .collect()
        };
        let mut deleted = 0_u64;
        for record in doomed {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: record.uid(),
                    resource_version: record.resource_version(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&record.name_any(), &params).await {
                Ok(_) => {
                    deleted += 1;
                    if let Ok(mut memory) = clock.memory.lock()
                        && record.name_any() == record_name(&record.spec.image)
                    {
                        memory.seen.remove(&record.spec.image);
                    }
                }
                Err(e) => debug!(error = %e, record = %record.name_any(), "tag record kept"),
            }
        }
        if deleted > 0 {
            r.metrics
                .tag_records
                .with_label_values(&["deleted"])
                .inc_by(deleted);
            info!(deleted, "tag records nothing looked at were deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    const ORIGIN: Origin<'static> = Origin {
        namespace: "shop",
        workload: "app",
    };

    #[test]
    fn a_tag_keeps_its_since_until_it_names_another_digest() {
        let clock = TagClock::in_memory();
        assert_eq!(clock.since("r/a:1", &digest('a'), at(0), ORIGIN), at(0));
        assert_eq!(clock.since("r/a:1", &digest('a'), at(60), ORIGIN), at(0));
        assert_eq!(
            clock.since("r/b:1", &digest('a'), at(60), ORIGIN),
            at(60),
            "per tag"
        );
        assert_eq!(
            clock.since("r/a:1", &digest('b'), at(90), ORIGIN),
            at(90),
            "moved"
        );
        assert_eq!(clock.since("r/a:1", &digest('b'), at(120), ORIGIN), at(90));
    }
}
