//! Since when each tag has named its digest: [`TagRecord`]s in freshen's
//! namespace, read from a watch and written once per change of digest, so
//! that "update available since", "base stale since" and the age of a
//! digest whose build time is unknown survive restarts and failovers.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use freshen_api::tag::{TagRecord, TagRecordSpec, record_name};
use freshen_core::Digest;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::deployment::FIELD_MANAGER;

/// Tags remembered between a record's write and the watch showing it, at
/// most (a flood of new tags cannot grow memory without bound).
const MAX_PENDING: usize = 100_000;

/// Where records are kept, when they are.
struct Records {
    store: Store<TagRecord>,
    namespace: String,
    writes: mpsc::UnboundedSender<TagRecordSpec>,
}

/// Answers since when a tag has named a digest.
pub struct TagClock {
    records: Option<Records>,
    pending: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
}

impl TagClock {
    /// A clock that remembers for this process only (`freshen report`).
    pub fn in_memory() -> Self {
        Self {
            records: None,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// A clock that reads `store` (the records of `namespace`) and writes
    /// new records through `client`, from a spawned task.
    pub fn recorded(
        store: Store<TagRecord>,
        namespace: String,
        client: Client,
    ) -> std::sync::Arc<Self> {
        let (writes, rx) = mpsc::unbounded_channel();
        let clock = std::sync::Arc::new(Self {
            records: Some(Records {
                store,
                namespace: namespace.clone(),
                writes,
            }),
            pending: Mutex::new(HashMap::new()),
        });
        tokio::spawn(write(
            rx,
            Api::namespaced(client, &namespace),
            std::sync::Arc::downgrade(&clock),
        ));
        clock
    }

    /// Since when `image` (`registry/repository:tag`) has named `digest`:
    /// as recorded, else `now`, which is then recorded.
    pub fn since(&self, image: &str, digest: &Digest, now: DateTime<Utc>) -> DateTime<Utc> {
        let digest = digest.to_string();
        if let Some(r) = &self.records
            && let Some(record) = r
                .store
                .get(&ObjectRef::new(&record_name(image)).within(&r.namespace))
            && record.spec.image == image
            && record.spec.digest == digest
        {
            return record.spec.since.min(now);
        }
        let Ok(mut pending) = self.pending.lock() else {
            return now;
        };
        if let Some((known, since)) = pending.get(image)
            && *known == digest
        {
            return *since;
        }
        if pending.len() >= MAX_PENDING {
            pending.clear();
        }
        pending.insert(image.to_owned(), (digest.clone(), now));
        if let Some(r) = &self.records {
            let _ = r.writes.send(TagRecordSpec {
                image: image.to_owned(),
                digest,
                since: now,
            });
        }
        now
    }

    /// Forgets a pending record whose write failed, so that the next look
    /// writes it again.
    fn unwritten(&self, spec: &TagRecordSpec) {
        if let Ok(mut pending) = self.pending.lock()
            && pending
                .get(&spec.image)
                .is_some_and(|(d, _)| *d == spec.digest)
        {
            pending.remove(&spec.image);
        }
    }
}

/// Writes records as they come (server-side apply: one owner, the latest
/// digest wins).
async fn write(
    mut rx: mpsc::UnboundedReceiver<TagRecordSpec>,
    api: Api<TagRecord>,
    clock: std::sync::Weak<TagClock>,
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

    #[test]
    fn a_tag_keeps_its_since_until_it_names_another_digest() {
        let clock = TagClock::in_memory();
        assert_eq!(clock.since("r/a:1", &digest('a'), at(0)), at(0));
        assert_eq!(clock.since("r/a:1", &digest('a'), at(60)), at(0));
        assert_eq!(
            clock.since("r/b:1", &digest('a'), at(60)),
            at(60),
            "per tag"
        );
        assert_eq!(clock.since("r/a:1", &digest('b'), at(90)), at(90), "moved");
        assert_eq!(clock.since("r/a:1", &digest('b'), at(120)), at(90));
    }
}
