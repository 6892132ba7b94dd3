//! What every reconcile gets, whatever its controller: timing, panic
//! containment, a Warning Event when it fails, and one error policy.
//!
//! kube-runtime polls every reconcile inside the controller's own stream, so
//! a panic in one reconcile would end the stream and, with it, the operator;
//! restarted, it would panic on the same object again. [`contained`] turns a
//! panic into [`Error::Panicked`] for that object. Any failure (panic or
//! error) is published as a Warning Event on the object, its reason the
//! error's category in CamelCase and its note the cause chain, once per
//! object and category (again after an hour); [`error_policy`] counts it by
//! controller and category and retries with backoff, or waits for a change
//! when retrying cannot help.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{error, warn};

use crate::error::Error;
use crate::runtime::context::Context;

/// An object a controller reconciles, which knows its own dynamic type
/// (a workload its kind; every other type `()`).
pub trait Reconciled: Resource + Send + Sync + 'static {
    /// The object's dynamic type.
    fn dynamic_type(&self) -> Self::DynamicType;
}

macro_rules! reconciled_static {
    ($($t:ty),*) => {$(
        impl Reconciled for $t {
            fn dynamic_type(&self) {}
        }
    )*};
}

reconciled_static!(
    freshen_api::Refresh,
    freshen_api::Rebuild,
    freshen_api::RefreshPolicy,
    freshen_api::ClusterRefreshPolicy,
    crate::runtime::cached::CachedPod
);

impl Reconciled for crate::runtime::cached::CachedWorkload {
    fn dynamic_type(&self) -> freshen_core::kind::Kind {
        self.kind
    }
}

/// The `controller` label of `object`'s controller, e.g. `deployment`
/// (bounded: one per kind).
fn controller<K: Reconciled>(object: &K) -> String {
    K::kind(&object.dynamic_type()).to_ascii_lowercase()
}

/// Wraps a reconcile function: timed by controller, a panic contained to
/// the object, a failure announced on the object.
pub fn contained<K, F, Fut>(
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Reconciled,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    move |object: Arc<K>, ctx: Arc<Context>| {
        let reconcile = Arc::clone(&reconcile);
        async move {
            let dynamic_type = object.dynamic_type();
            let target = object.object_ref(&dynamic_type);
            let key = format!(
                "{}/{}/{}",
                K::kind(&dynamic_type),
                object.namespace().unwrap_or_default(),
                object.name_any()
            );
            let timer = ctx
                .metrics
                .reconcile_duration
                .with_label_values(&[&controller(object.as_ref())])
                .start_timer();
            let run = AssertUnwindSafe(reconcile(object, Arc::clone(&ctx))).catch_unwind();
            let result = match run.await {
                Ok(result) => result,
                Err(payload) => {
                    let what = panic_message(payload.as_ref());
                    error!(panic = %what, object = %key, "reconcile panicked; contained");
                    Err(Error::Panicked(what))
                }
            };
            drop(timer);
            match &result {
                Ok(_) => ctx.failures.cleared(&key),
                Err(e)
                    if e.worth_an_event()
                        && ctx.failures.is_news(&key, e.category(), Instant::now()) =>
                {
                    let mut note = e.chain();
                    if matches!(e, Error::Panicked(_)) {
                        note.push_str(
                            "; freshen hit a bug here. It retries later and every other object \
                             carries on; please report it",
                        );
                    }
                    ctx.publish_failure(e, note, target).await;
                }
                Err(_) => {}
            }
            result
        }
        .boxed()
    }
}

/// What to do after a failed reconcile of any controller: count it by
/// controller and category, then retry later (every action is safe to
/// repeat), or wait for the object to change when retrying cannot help.
pub fn error_policy<K: Reconciled>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[&controller(object.as_ref()), error.category()])
        .inc();
    warn!(error = %error.chain(), controller = %controller(object.as_ref()), "reconcile failed");
    if error.heals() {
        Action::requeue(ctx.config.error_requeue)
    } else {
        Action::await_change()
    }
}

/// The text a panic carried, bounded.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    text.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_read_and_bounded() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&"x".repeat(1000)).len(), 256);
        assert_eq!(panic_message(&42u8), "a panic without a message");
    }
}
