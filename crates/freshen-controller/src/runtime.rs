//! What every controller shares: the caches (trimmed watch objects, the
//! pod index, the per-workload records), the context each reconcile gets,
//! metrics, Events, leader election, the HTTP server, the Prometheus
//! client, and the wrapper every reconcile runs in.

pub mod api_requests;
pub mod cached;
pub mod contain;
pub mod context;
pub mod events;
pub mod failures;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod metrics_auth;
pub mod objects;
pub mod pod_index;
pub mod promql;
pub mod records;
pub mod server;
pub mod trim;
