//! Runs as Tekton `tekton.dev/v1` PipelineRuns in the Rebuild's namespace,
//! owned by it. freshen does not watch PipelineRuns (Tekton may not be
//! installed where freshen runs): a run is read when its Rebuild is
//! reconciled, at least every [`POLL`] while it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use freshen_api::pipeline::{Rebuild, TektonPipeline};
use freshen_core::rebuild::{self, RunState};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::info;

use super::{REBUILD_LABEL, Runner};
use crate::error::Error;
use crate::runtime::context::Context;
use crate::runtime::objects::FIELD_MANAGER;

/// How often a running PipelineRun is read.
pub const POLL: Duration = Duration::from_secs(10);

/// The PipelineRun resource.
fn resource() -> ApiResource {
    ApiResource {
        group: "tekton.dev".into(),
        version: "v1".into(),
        api_version: "tekton.dev/v1".into(),
        kind: "PipelineRun".into(),
        plural: "pipelineruns".into(),
    }
}

/// Runs as PipelineRuns of `pipeline`.
pub(super) struct PipelineRuns<'a> {
    pub(super) ctx: &'a Context,
    pub(super) pipeline: &'a TektonPipeline,
}

impl PipelineRuns<'_> {
    fn api(&self, rebuild: &Rebuild) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.ctx.client.clone(),
            &rebuild.namespace().unwrap_or_default(),
            &resource(),
        )
    }
}

impl Runner for PipelineRuns<'_> {
    fn run_name(&self, rebuild: &Rebuild, attempt: u32) -> String {
        format!("{}-{attempt}", rebuild.name_any())
    }

    async fn observe(&self, rebuild: &Rebuild, attempt: u32) -> RunState {
        match self
            .api(rebuild)
            .get_opt(&self.run_name(rebuild, attempt))
            .await
        {
            Ok(Some(run)) => pipeline_run_state(&run.data),
            Ok(None) => RunState::Missing,
            // Not readable now (or Tekton is not installed): still
            // running as far as anyone knows; the timeout ends it.
            Err(e) => {
                tracing::warn!(error = %e, "PipelineRun not read");
                RunState::Running
            }
        }
    }

    async fn trigger(
        &self,
        rebuild: &Rebuild,
        attempt: u32,
        values: &BTreeMap<&'static str, String>,
    ) -> Result<(), Error> {
        let name = self.run_name(rebuild, attempt);
        let params = self
            .pipeline
            .params
            .iter()
            .map(|p| {
                let value = rebuild::render(&p.value, values)
                    .map_err(|e| Error::Pipeline(e.to_string()))?;
                Ok(json!({"name": p.name, "value": value}))
            })
            .collect::<Result<Vec<Value>, Error>>()?;
        let mut spec = json!({
            "pipelineRef": {"name": self.pipeline.pipeline_ref},
            "params": params,
            "timeouts": {"pipeline": format!("{}s", rebuild.spec.timeout_seconds.max(1))},
        });
        if let Some(account) = &self.pipeline.service_account_name {
            spec["taskRunTemplate"] = json!({"serviceAccountName": account});
        }
        let owner = rebuild
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        let run: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1",
            "kind": "PipelineRun",
            "metadata": {
                "name": name,
                "namespace": rebuild.namespace(),
                "labels": {REBUILD_LABEL: rebuild.name_any(),
                           "app.kubernetes.io/managed-by": "freshen"},
                "ownerReferences": [owner],
            },
            "spec": spec,
        }))
        .map_err(Error::Serialize)?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.api(rebuild).create(&params, &run).await {
            Ok(_) => {
                info!(run = %name, "rebuild PipelineRun started");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(Error::TriggerRun(e)),
        }
    }

    async fn cancel(&self, rebuild: &Rebuild, attempt: u32) -> Result<(), Error> {
        let patch = json!({"spec": {"status": "Cancelled"}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self
            .api(rebuild)
            .patch(
                &self.run_name(rebuild, attempt),
                &params,
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(Error::CancelRun(e)),
        }
    }
}

/// A PipelineRun's state from its `Succeeded` condition: True is success
/// (reason Succeeded or Completed), False failure (Failed,
/// PipelineRunTimeout, Cancelled, ...), anything else running.
pub fn pipeline_run_state(run: &Value) -> RunState {
    let succeeded = run
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Succeeded"))
        });
    let Some(condition) = succeeded else {
        return RunState::Running;
    };
    let text = |key: &str| {
        condition
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match condition.get("status").and_then(Value::as_str) {
        Some("True") => RunState::Succeeded,
        Some("False") => {
            let name = run
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            RunState::Failed(
                format!("PipelineRun {name}: {} {}", text("reason"), text("message"))
                    .trim_end()
                    .to_owned(),
            )
        }
        _ => RunState::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_run_reads_as_its_succeeded_condition_says() {
        let run = |conditions: Value| {
            json!({"metadata": {"name": "rebuild-1-1"},
                                             "status": {"conditions": conditions}})
        };
        assert_eq!(pipeline_run_state(&json!({})), RunState::Running);
        assert_eq!(
            pipeline_run_state(&run(json!([{"type": "Succeeded", "status": "Unknown",
                                            "reason": "Running"}]))),
            RunState::Running
        );
        assert_eq!(
            pipeline_run_state(&run(json!([{"type": "Succeeded", "status": "True",
                                            "reason": "Completed"}]))),
            RunState::Succeeded
        );
        assert_eq!(
            pipeline_run_state(&run(json!([{"type": "Succeeded", "status": "False",
                                            "reason": "PipelineRunTimeout",
                                            "message": "timed out after 1h"}]))),
            RunState::Failed(
                "PipelineRun rebuild-1-1: PipelineRunTimeout timed out after 1h".into()
            )
        );
    }
}
