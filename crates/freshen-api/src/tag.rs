//! `TagRecord`: since when a tag has named its digest, kept by freshen in
//! its own namespace so that a restart or a failover changes no age and no
//! deadline.
//!
//! "Update available since" is since when the tag a workload follows has
//! named a digest its pods do not run; "base stale since" (when the new
//! base's build time is unknown) is since when the base's tag has named its
//! new digest; and for an image whose build time is unknown (reproducible
//! builds write `created` = 1970), how long its digest has been what its
//! tag names is the only age there is. All three are one fact per tag,
//! recorded here once per change of digest.

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Since when a tag has named a digest, as freshen first saw it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "freshen.dev",
    version = "v1alpha1",
    kind = "TagRecord",
    doc = "Since when a tag has named its digest, as freshen first saw it; kept in freshen's namespace.",
    namespaced,
    shortname = "tr",
    category = "freshen",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".spec.digest"}"#,
    printcolumn = r#"{"name":"Since","type":"date","jsonPath":".spec.since"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TagRecordSpec {
    /// The tag, as `registry/repository:tag`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The digest the tag names.
    #[schemars(length(min = 1, max = 256))]
    pub digest: String,
    /// When freshen first saw the tag name that digest (a lower bound: the
    /// tag may have named it before freshen looked).
    pub since: DateTime<Utc>,
    /// The namespace of the workload that first named the tag: records are
    /// capped per namespace (`--max-tag-records-per-namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub origin: Option<String>,
}

/// The name of the record of `image` (`registry/repository:tag`): `tag-`
/// and 20 hex digits (80 bits) of its SHA-256, so no one can choose a tag
/// whose record takes another tag's name.
pub fn record_name(image: &str) -> String {
    format!("tag-{}", freshen_core::plan::strong_fingerprint(image))
}

/// The name records had before [`record_name`] used SHA-256 (FNV-64): read
/// once so ages survive the upgrade, then rewritten under the new name.
pub fn legacy_record_name(image: &str) -> String {
    format!("tag-{}", freshen_core::plan::fingerprint(image))
}
