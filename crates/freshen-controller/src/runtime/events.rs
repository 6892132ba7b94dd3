//! Publishing Kubernetes Events: every publisher goes through
//! [`Context::publish`] (a reason of [`EventReason`]) or
//! [`Context::publish_failure`] (a failed reconcile, its reason the error's
//! category), which bound the note and never fail a reconcile.

use freshen_core::event::EventReason;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::error::Error;
use crate::runtime::cached::CachedWorkload;
use crate::runtime::context::Context;

/// An Event note the API server accepts: at most 1 KiB.
pub(crate) fn truncate_note(mut note: String) -> String {
    if note.len() > 1024 {
        let mut end = 1021;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

impl Context {
    /// Publishes an Event on each of `targets`; a failure to publish is
    /// logged, never fatal. The note is cut to what the API server accepts.
    pub(crate) async fn publish(
        &self,
        type_: EventType,
        reason: EventReason,
        action: &str,
        note: String,
        targets: &[ObjectReference],
    ) {
        self.send(type_, reason.as_str(), action, note, targets)
            .await;
    }

    /// Publishes the Warning of a failed reconcile on its object: the
    /// reason is the error's category in PascalCase (see
    /// [`Error::reason`]).
    pub(crate) async fn publish_failure(
        &self,
        error: &Error,
        note: String,
        target: ObjectReference,
    ) {
        self.send(
            EventType::Warning,
            &error.reason(),
            "Reconcile",
            note,
            &[target],
        )
        .await;
    }

    async fn send(
        &self,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        targets: &[ObjectReference],
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate_note(note)),
            action: action.into(),
            secondary: None,
        };
        for target in targets {
            if let Err(e) = self.recorder.publish(&event, target).await {
                warn!(error = %e, "could not publish event");
            }
        }
    }

    /// Publishes a Warning Event on a workload.
    pub(crate) async fn warn(&self, deploy: &CachedWorkload, reason: EventReason, note: String) {
        let target = deploy.object_ref(&deploy.kind);
        self.publish(EventType::Warning, reason, "Measure", note, &[target])
            .await;
    }
}
