//! The Helm chart (`charts/freshen`) as a platform team meets it: linted
//! strictly, rendered over a matrix of values with every object accepted by
//! the harness' real API server (server-side dry-run), its schema refusing
//! bad values, every `freshen run` flag reachable, and its alerts and
//! dashboard checked by Prometheus' own tools and server.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context as _, bail, ensure};
use freshen_e2e::{Harness, repo_root};

fn chart() -> PathBuf {
    repo_root().join("charts/freshen")
}

/// A values file with `yaml` in a temporary directory.
fn values_file(name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("target/e2e-chart");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// `helm template` of the chart as release `release` in `freshen-system`
/// with `args`; its stdout, or its stderr as the error.
fn template(harness: &Harness, release: &str, args: &[&str]) -> anyhow::Result<String> {
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    let mut all = vec!["template", release, chart, "--namespace", "freshen-system"];
    all.extend_from_slice(args);
    let out = harness.helm(&all)?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The `kind`s of a rendered manifest stream.
fn kinds(manifests: &str) -> Vec<String> {
    manifests
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

/// The values matrix: name, values, extra helm arguments.
const MATRIX: &[(&str, &str, &[&str])] = &[
    ("defaults", "{}", &[]),
    (
        "namespaced",
        "watchNamespaces: [freshen-chart-a]\npipelines: {job: {enabled: true}}\n",
        &[],
    ),
    (
        "monitoring",
        "metrics: {serviceMonitor: {enabled: true}}\nprometheusRule: {enabled: true}\n\
         networkPolicy: {enabled: true}\n\
         notifications: {enabled: true, tokenSecret: {name: notify-token}}\n",
        &[
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
        ],
    ),
    (
        "restricted-secrets",
        "secrets: {read: namespaces, namespaces: [freshen-chart-a, freshen-chart-b]}\n\
         pipelines: {job: {enabled: true}, tekton: {enabled: true}, namespaces: [freshen-chart-b]}\n\
         workloadKinds: [Deployment, StatefulSet, DaemonSet, Job, ReplicaSet, Rollout, Pod]\n",
        &[],
    ),
    (
        "no-secrets",
        "secrets: {read: none}\npipelines: {webhook: {enabled: false}}\n",
        &[],
    ),
];

#[test]
fn the_chart_lints_strictly_with_every_values_set() -> anyhow::Result<()> {
    let harness = Harness::load()?;
    let chart = chart();
    for (name, values, _) in MATRIX {
        let file = values_file(name, values)?;
        let out = harness.helm(&[
            "lint",
            "--strict",
            chart.to_str().context("chart path")?,
            "--values",
            file.to_str().context("values path")?,
        ])?;
        ensure!(
            out.status.success(),
            "helm lint --strict with {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn every_rendering_of_the_matrix_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let harness = Harness::load()?;
    for ns in ["freshen-chart-a", "freshen-chart-b"] {
        let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        let out = harness.kubectl(&["apply", "-f", "-"], Some(namespace.as_bytes()))?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, values, extra) in MATRIX {
        let file = values_file(name, values)?;
        let mut args = vec!["--values", file.to_str().context("values path")?];
        args.extend_from_slice(extra);
        // Another release name than the harness' own, so names differ.
        let rendered = template(&harness, "matrix", &args)
            .with_context(|| format!("helm template with {name}"))?;
        let out = harness.kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager=chart-matrix",
                "-f",
                "-",
            ],
            Some(rendered.as_bytes()),
        )?;
        ensure!(
            out.status.success(),
            "the API server refused the {name} rendering: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let applied = String::from_utf8_lossy(&out.stdout);
        ensure!(
            applied.lines().count() == kinds(&rendered).len(),
            "{name}: every object is applied:\n{applied}"
        );
    }
    Ok(())
}

#[test]
fn each_values_set_renders_what_it_says() -> anyhow::Result<()> {
    let harness = Harness::load()?;
    let render = |name: &str| -> anyhow::Result<String> {
        let (_, values, extra) = MATRIX
            .iter()
            .find(|(n, _, _)| *n == name)
            .context("no such matrix entry")?;
        let file = values_file(name, values)?;
        let mut args = vec!["--values", file.to_str().context("values path")?];
        args.extend_from_slice(extra);
        template(&harness, "matrix", &args)
    };

    let defaults = render("defaults")?;
    let kinds_of_defaults: BTreeSet<String> = kinds(&defaults).into_iter().collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "ValidatingAdmissionPolicy",
    ] {
        ensure!(kinds_of_defaults.contains(kind), "defaults render a {kind}");
    }
    for absent in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
        ensure!(
            !kinds_of_defaults.contains(absent),
            "defaults render no {absent}"
        );
    }
    // Secrets readable cluster-wide by default; Jobs created for CronJob
    // canaries (CronJobs are refreshed by default), and no PipelineRun
    // right unless a pipeline kind asks for it. Without CronJobs in
    // workloadKinds, Jobs are only read (restricted-secrets below).
    let cluster_role = |rendered: &str| -> anyhow::Result<String> {
        rendered
            .split("\n---\n")
            .find(|d| d.contains("kind: ClusterRole\n") && d.contains("\"deployments\""))
            .map(str::to_owned)
            .context("a ClusterRole")
    };
    let rules = cluster_role(&defaults)?;
    ensure!(rules.contains("resources: [\"secrets\"]"));
    ensure!(
        rules.contains("\"cronjobs\"") && creates_jobs(&rules),
        "{rules}"
    );
    ensure!(!rules.contains("pipelineruns"));
    ensure!(defaults.contains("--pipeline-kinds=webhook"));
    // The restricted Pod Security Standard.
    for line in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "- ALL",
        "type: RuntimeDefault",
        "fieldPath: metadata.name",
        "fieldPath: metadata.namespace",
        "replicas: 2",
        "minAvailable: 1",
        "--leader-elect=true",
        "helm.sh/resource-policy: keep",
        "grafana_dashboard: \"1\"",
    ] {
        ensure!(defaults.contains(line), "defaults render {line:?}");
    }

    let namespaced = render("namespaced")?;
    ensure!(namespaced.contains("--namespace=freshen-chart-a"));
    ensure!(
        namespaced.contains(
            "kind: Role\nmetadata:\n  name: matrix-freshen\n  namespace: freshen-chart-a"
        ),
        "the watched namespace gets a Role"
    );
    ensure!(namespaced.contains("--pipeline-kinds=job,webhook"));

    let restricted = render("restricted-secrets")?;
    ensure!(
        restricted
            .matches("kind: Role\nmetadata:\n  name: matrix-freshen-secrets\n")
            .count()
            == 2,
        "a secrets Role in each of the two namespaces"
    );
    let cluster_role = cluster_role(&restricted)?;
    ensure!(
        !cluster_role.contains("secrets") && !creates_jobs(&cluster_role),
        "no cluster-wide Secret or Job-creating right: {cluster_role}"
    );
    ensure!(!render("no-secrets")?.contains("\"secrets\""));

    let monitoring = render("monitoring")?;
    for kind in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
        ensure!(kinds(&monitoring).iter().any(|k| k == kind), "{kind}");
    }
    ensure!(monitoring.contains("--notify-token-file=/etc/freshen/notify-token/token"));
    Ok(())
}

/// Whether a rendered role grants creating Jobs (reading them is how
/// freshen measures them).
fn creates_jobs(rules: &str) -> bool {
    rules
        .split("- apiGroups:")
        .any(|rule| rule.contains("\"jobs\"") && rule.contains("create"))
}

#[test]
fn render_modes_follow_what_the_cluster_serves() -> anyhow::Result<()> {
    let harness = Harness::load()?;
    let with = |mode: &str, api: bool| {
        let mut args = vec![
            "--set".to_owned(),
            "metrics.serviceMonitor.enabled=true".to_owned(),
            "--set".to_owned(),
            format!("metrics.serviceMonitor.renderMode={mode}"),
        ];
        if api {
            args.extend([
                "--api-versions".into(),
                "monitoring.coreos.com/v1/ServiceMonitor".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        template(&harness, "modes", &args)
    };
    let monitors = |r: anyhow::Result<String>| -> anyhow::Result<usize> {
        Ok(kinds(&r?).iter().filter(|k| *k == "ServiceMonitor").count())
    };
    ensure!(monitors(with("skipIfMissing", false))? == 0);
    ensure!(monitors(with("skipIfMissing", true))? == 1);
    ensure!(monitors(with("alwaysRender", false))? == 1);
    let refused = with("failIfMissing", false).err().map(|e| e.to_string());
    ensure!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("monitoring.coreos.com/v1/ServiceMonitor")),
        "failIfMissing fails and names the API: {refused:?}"
    );
    ensure!(monitors(with("failIfMissing", true))? == 1);
    Ok(())
}

#[test]
fn the_schema_refuses_bad_values_naming_the_key() -> anyhow::Result<()> {
    let harness = Harness::load()?;
    for (yaml, names) in [
        ("replicas: 2\n", "replicas"),
        ("replicaCount: two\n", "replicaCount"),
        ("secrets: {read: some}\n", "read"),
        ("config: {pollInterval: 5 minutes}\n", "pollInterval"),
        ("watchNamespaces: [a, b]\n", "watchNamespaces"),
        (
            "metrics: {serviceMonitor: {renderMode: sometimes}}\n",
            "renderMode",
        ),
        ("registry: {qps: fast}\n", "qps"),
        ("pipelines: {job: {enabled: yes-please}}\n", "enabled"),
    ] {
        let file = values_file("bad", yaml)?;
        let refused = template(
            &harness,
            "bad",
            &["--values", file.to_str().context("path")?],
        );
        let Err(e) = refused else {
            bail!("the schema accepted {yaml:?}");
        };
        ensure!(
            e.to_string().contains(names),
            "the error for {yaml:?} names {names}: {e}"
        );
    }
    // What the templates refuse on their own, with the reason.
    for (set, reason) in [
        ("secrets.read=namespaces", "secrets.namespaces"),
        ("notifications.enabled=true", "tokenSecret"),
    ] {
        let e = template(&harness, "bad", &["--set", set])
            .err()
            .map(|e| e.to_string());
        ensure!(
            e.as_deref().is_some_and(|e| e.contains(reason)),
            "{set}: {e:?}"
        );
    }
    Ok(())
}

#[test]
fn every_run_flag_is_reachable_from_values() -> anyhow::Result<()> {
    let help = std::process::Command::new(freshen_e2e::operator::binary())
        .args(["run", "--help"])
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    let flags: BTreeSet<&str> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-n, ").unwrap_or(l);
            l.strip_prefix("--")?.split([' ', '=']).next()
        })
        .filter(|f| !["help", "version"].contains(f))
        .collect();
    ensure!(
        flags.len() > 20,
        "read the flags of `freshen run --help`: {flags:?}"
    );
    let deployment = std::fs::read_to_string(chart().join("templates/deployment.yaml"))?;
    let missing: Vec<_> = flags
        .iter()
        .filter(|f| !deployment.contains(&format!("- --{f}=")))
        .collect();
    ensure!(
        missing.is_empty(),
        "flags the chart cannot set: {missing:?}"
    );
    Ok(())
}

#[test]
fn the_generated_chart_files_are_current() -> anyhow::Result<()> {
    for (script, file) in [
        ("hack/schema.py", "values.schema.json"),
        ("hack/dashboard.py", "files/dashboard.json"),
    ] {
        let out = repo_root()
            .join("target/e2e-chart")
            .join(file.replace('/', "-"));
        std::fs::create_dir_all(out.parent().context("parent")?)?;
        let status = std::process::Command::new("python3")
            .arg(chart().join(script))
            .arg(&out)
            .status()?;
        ensure!(status.success(), "python3 {script}");
        ensure!(
            std::fs::read(&out)? == std::fs::read(chart().join(file))?,
            "charts/freshen/{file} is stale: run `python3 charts/freshen/{script}` and commit it"
        );
    }
    Ok(())
}

/// Runs promtool with `args` in the chart's directory.
fn promtool(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(chart())
        .output()
        .context("running promtool (e2e/harness/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_alerts_pass_promtool_and_the_prometheus_rule_carries_them() -> anyhow::Result<()> {
    promtool(&["check", "rules", "files/alerts.yaml"])?;
    promtool(&["test", "rules", "tests/alerts.test.yaml"])?;

    let harness = Harness::load()?;
    let rendered = template(
        &harness,
        "rules",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.renderMode=alwaysRender",
        ],
    )?;
    let rule = rendered
        .split("\n---\n")
        .find(|d| d.contains("kind: PrometheusRule"))
        .context("a PrometheusRule")?;
    let rule: serde_yaml::Value = serde_yaml::from_str(rule)?;
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml"))?)?;
    ensure!(
        rule["spec"]["groups"] == file["groups"],
        "the PrometheusRule holds files/alerts.yaml"
    );
    let alerts: Vec<String> = file["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    let tests = std::fs::read_to_string(chart().join("tests/alerts.test.yaml"))?;
    for alert in &alerts {
        ensure!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts: []"))
                && tests.matches(&format!("alertname: {alert}\n")).count() >= 2,
            "{alert} is tested both firing and not firing"
        );
    }
    ensure!(alerts.len() == 10, "{alerts:?}");
    Ok(())
}

/// The metric names freshen exports: the `"freshen_..."` literals of its
/// crates.
fn exported_metrics() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![repo_root().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                // Every `"freshen_..."` literal, wherever it starts (escaped
                // quotes elsewhere in a file must not shift what is inside
                // a string and what is not).
                for (at, _) in text.match_indices("\"freshen_") {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find('"') else { continue };
                    let part = &rest[..end];
                    if part.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        names.insert(part.to_owned());
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The `freshen_*` names an expression reads (histograms by their series).
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("freshen_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_is_valid_promql_over_exported_metrics()
-> anyhow::Result<()> {
    freshen_e2e::init_tls();
    let harness = Harness::load()?;
    let exported = exported_metrics()?;
    let file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml"))?)?;
    let mut queries = freshen_e2e::prometheus::dashboard_queries()?;
    ensure!(queries.len() >= 15, "{queries:?}");
    for group in file["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            queries.push((
                rule["alert"].as_str().unwrap_or_default().to_owned(),
                rule["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    let http = reqwest::Client::new();
    for (title, expr) in &queries {
        for metric in metrics_in(expr) {
            ensure!(
                exported.contains(&metric),
                "{title}: freshen exports no {metric}"
            );
        }
        // Prometheus parses the expression; a syntax error is a 400.
        let answer = http
            .get(format!("{}/api/v1/query", harness.prometheus_url))
            .query(&[("query", expr.as_str())])
            .send()
            .await?;
        let status = answer.status();
        let body: serde_json::Value = answer.json().await?;
        ensure!(
            status.is_success() && body["status"] == "success",
            "{title}: Prometheus refused {expr}: {body}"
        );
    }
    Ok(())
}

#[test]
fn the_operator_pod_passes_the_restricted_pod_security_standard() -> anyhow::Result<()> {
    // The API server's own Pod Security admission judges the chart's pod
    // template, as a pod, in a namespace that enforces `restricted`.
    let harness = Harness::load()?;
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: freshen-chart-restricted\n  \
                     labels:\n    pod-security.kubernetes.io/enforce: restricted\n";
    let out = harness.kubectl(&["apply", "-f", "-"], Some(namespace.as_bytes()))?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = template(&harness, "pss", &[])?;
    let deployment = rendered
        .split("\n---\n")
        .find(|d| d.contains("\nkind: Deployment\n"))
        .context("a Deployment")?;
    let deployment: serde_json::Value = serde_yaml::from_str(deployment)?;
    let mut template = deployment["spec"]["template"].clone();
    // The release's ServiceAccount lives elsewhere; Pod Security does not
    // look at it.
    if let Some(spec) = template["spec"].as_object_mut() {
        spec.remove("serviceAccountName");
    }
    let pod = |spec: &serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "freshen-pss", "namespace": "freshen-chart-restricted"},
            "spec": spec,
        })
    };
    let create = |pod: serde_json::Value| -> anyhow::Result<std::process::Output> {
        harness.kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(pod.to_string().as_bytes()),
        )
    };
    let out = create(pod(&template["spec"]))?;
    ensure!(
        out.status.success(),
        "the restricted standard refused the operator's pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check has teeth: the same pod without its security context is
    // refused.
    let mut loose = template["spec"].clone();
    loose["securityContext"] = serde_json::json!({});
    loose["containers"][0]["securityContext"] = serde_json::json!({});
    let out = create(pod(&loose))?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity \"restricted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
