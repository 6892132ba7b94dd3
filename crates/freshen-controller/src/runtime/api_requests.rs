//! Every request freshen sends the API server, counted by verb and
//! resource: `freshen_api_requests_total`, as controller-runtime's
//! `rest_client_requests_total` counts an operator's. It shows what the
//! operator costs the control plane: at rest it should send no LIST or GET
//! per workload, only its watches and its Lease.
//!
//! The count is a layer of the client's service stack, so no request goes
//! uncounted, whichever code sends it.

use http::{Method, Request, Uri};
use kube::client::{Body, ClientBuilder};
use prometheus::{IntCounterVec, Opts, Registry};

/// The counter, shared between the client's layer and the registry.
#[derive(Clone, Debug)]
pub struct ApiRequests {
    counter: IntCounterVec,
}

impl ApiRequests {
    /// A counter at zero, not yet registered.
    pub fn new() -> prometheus::Result<Self> {
        let counter = IntCounterVec::new(
            Opts::new(
                "freshen_api_requests_total",
                "Requests sent to the Kubernetes API server, by verb (get, list, watch, create, \
                 update, patch, delete) and resource (with its subresource, e.g. \
                 refreshes/status).",
            ),
            &["verb", "resource"],
        )?;
        Ok(Self { counter })
    }

    /// The counter, to register (it shares its state with `self`).
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.counter.clone())
    }

    /// Adds the counter to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(self.collector())
    }

    /// A client for `config` whose every request is counted.
    pub fn client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        let counter = self.counter.clone();
        let count = tower::util::MapRequestLayer::new(move |request: Request<Body>| {
            let (verb, resource) = classify(request.method(), request.uri());
            counter.with_label_values(&[verb, &resource]).inc();
            request
        });
        Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
    }
}

/// The verb and resource of a request to the API server. The resource is
/// the plural with its subresource (`deployments`, `refreshes/status`);
/// discovery and other non-resource paths are `other`. Its values are the
/// paths freshen's own code requests, a closed set.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return (verb_of(method, false, false), "other".to_owned()),
    };
    // Namespaced: namespaces/<ns>/<resource>[/<name>[/<sub>]]; the
    // namespaces resource itself is namespaces[/<name>[/<sub>]].
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let mut r = vec![*resource];
            r.extend_from_slice(tail);
            r
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => ("other".to_owned(), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    (verb_of(method, named, watch), resource)
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().unwrap_or_default())
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            (
                Method::GET,
                "/apis/apps/v1/deployments?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=5",
                ("watch", "deployments"),
            ),
            (Method::GET, "/api/v1/pods?limit=500", ("list", "pods")),
            (
                Method::GET,
                "/api/v1/namespaces/shop/secrets/regcred",
                ("get", "secrets"),
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/shop/deployments/web",
                ("get", "deployments"),
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/shop/deployments?&fieldManager=freshen",
                ("create", "deployments"),
            ),
            (
                Method::PATCH,
                "/apis/freshen.dev/v1alpha1/namespaces/shop/refreshes/r1/status",
                ("patch", "refreshes/status"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/freshen-system/leases/freshen-leader",
                ("update", "leases"),
            ),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/shop/deployments/web-canary",
                ("delete", "deployments"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces?watch=true",
                ("watch", "namespaces"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/shop",
                ("get", "namespaces"),
            ),
            (Method::GET, "/version", ("list", "other")),
            (Method::GET, "/apis", ("list", "other")),
        ];
        for (method, uri, (verb, resource)) in cases {
            assert_eq!(of(method, uri), (verb, resource.to_owned()), "{uri}");
        }
    }
}
