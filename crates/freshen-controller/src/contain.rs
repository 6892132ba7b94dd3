//! One object's panic stays that object's problem.
//!
//! kube-runtime polls every reconcile inside the controller's own stream, so
//! a panic in one reconcile would end the stream and, with it, the operator;
//! restarted, it would panic on the same object again. [`contained`] turns a
//! panic into [`Error::Panicked`] for that object: counted by the error
//! policy, published as a Warning Event on the object, retried with backoff
//! like any other failure, and every other object carries on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::error;

use crate::context::Context;
use crate::error::Error;

/// Wraps a reconcile function so that a panic in it becomes an error of
/// the object being reconciled.
pub fn contained<K, F, Fut>(
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    move |object: Arc<K>, ctx: Arc<Context>| {
        let reconcile = Arc::clone(&reconcile);
        async move {
            let target = object.object_ref(&());
            let run = AssertUnwindSafe(reconcile(object, Arc::clone(&ctx))).catch_unwind();
            match run.await {
                Ok(result) => result,
                Err(payload) => {
                    let what = panic_message(payload.as_ref());
                    error!(panic = %what, object = ?target.name, "reconcile panicked; contained");
                    ctx.publish(
                        EventType::Warning,
                        "ReconcilePanicked",
                        "Reconcile",
                        format!(
                            "freshen hit a bug reconciling this object ({what}); it retries \
                             later and every other object carries on. Please report it"
                        ),
                        &[target],
                    )
                    .await;
                    Err(Error::Panicked(what))
                }
            }
        }
        .boxed()
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
