//! Chaos: many refreshes at once (canaries that succeed, canaries that
//! crash-loop, promotions that fail, restarts of too-old containers,
//! rebuilds through a Job pipeline of images whose base moved) while
//! the operator is killed with SIGKILL at seeded random moments and
//! restarted. After every kill and at the end, freshen's promises are
//! checked against what the API server holds:
//!
//! - no canary without its Refresh;
//! - no workload half-changed: each template is its original with the image
//!   either the one it ran or the one its Refresh proposed (and freshen's
//!   restart stamp), nothing else;
//! - no workload at rest on a digest rejected for it;
//! - at the end: every Refresh terminal with the outcome its scenario
//!   calls for, no canary left, each phase's Event published at least once
//!   and at most once per operator that ran it, one pipeline run (Job) per
//!   moved base, and each outcome counted
//!   in `freshen_refreshes_total` never twice (a count in flight in a
//!   process killed before it was scraped is lost with the process, as any
//!   in-memory counter is).
//!
//! `FRESHEN_CHAOS_KILLS` sets the number of kills (5 here, in `make test`;
//! `make test-chaos` runs 50) and `FRESHEN_CHAOS_SEED` the seed; the seed
//! is printed first, and a failing seed reproduces the same kill schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use freshen_api::pipeline::{JobPipeline, Pipeline, RebuildOn, RebuildSettings};
use freshen_api::refresh::{REJECTED_DIGESTS, RESTARTED_BY};
use freshen_api::{PolicyPipelines, Rebuild, Refresh, RefreshPolicy, RefreshPolicySpec};
use freshen_core::rebuild::RebuildPhase;
use freshen_core::rollout::{Phase, Reason};
use freshen_e2e::image::{ImageSpec, Pushed, push};
use freshen_e2e::operator::{Operator, metric_value};
use freshen_e2e::{
    Harness, TestNamespace, canary_policy, deployment_with, init_tls, wait_for, wait_ready_pods,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// SplitMix64: a small seeded generator, so a seed gives the same kill
/// schedule on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in [`low`, `high`) milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// What a workload is meant to go through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A new good digest: canary, promotion, Succeeded.
    Promote,
    /// A new digest whose canary crash-loops: RolledBack, digest rejected.
    CanaryFails,
    /// A new digest that crashes only outside the canary: promoted, then
    /// RolledBack with the previous image restored.
    PromotionFails,
    /// Its image's base moves: one rebuild (one Job), then a canary to the
    /// rebuilt digest, Succeeded.
    Rebuilt,
}

/// The build system the test plays: for each Job of a rebuild pipeline it
/// pushes the rebuilt image (on the moved base), and it remembers every
/// image it rebuilt, so that a second Job for one change shows.
#[derive(Clone, Default)]
struct BuildSystem {
    /// App image (`registry/repo:tag`) -> its base's tagged reference.
    bases: Arc<Mutex<BTreeMap<String, String>>>,
    /// App image -> the images pushed for its Jobs, in order.
    built: Arc<Mutex<BTreeMap<String, Vec<Pushed>>>>,
    /// Jobs handled, by name.
    handled: Arc<Mutex<BTreeSet<String>>>,
}

impl BuildSystem {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn built(&self, image: &str) -> Vec<Pushed> {
        Self::lock(&self.built)
            .get(image)
            .cloned()
            .unwrap_or_default()
    }

    /// Handles every Job of `namespace` not handled yet.
    async fn serve(&self, harness: &Harness, jobs: &Api<Job>) -> anyhow::Result<()> {
        for job in jobs.list(&ListParams::default()).await?.items {
            let name = job.name_any();
            if !Self::lock(&self.handled).insert(name.clone()) {
                continue;
            }
            // args: build <image> from <digest> on <new base digest> ...
            let args = job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.args.clone())
                .unwrap_or_default();
            let (Some(image), Some(base_digest)) = (args.get(1), args.get(5)) else {
                anyhow::bail!("Job {name} without image and base: {args:?}");
            };
            let base = Self::lock(&self.bases).get(image).cloned();
            let Some(base) = base else {
                anyhow::bail!("Job {name} rebuilds {image}, which no workload runs");
            };
            let path = image
                .strip_prefix(&format!("{}/", harness.registry))
                .unwrap_or(image);
            let Some((repository, tag)) = path.rsplit_once(':') else {
                anyhow::bail!("Job {name}: {image} has no tag");
            };
            let mut rebuilt = spec(tag, &format!("rebuilt-by-{name}"), 0);
            rebuilt.base = Some((base, base_digest.clone()));
            let pushed = push(&harness.registry, repository, tag, &rebuilt).await?;
            Self::lock(&self.built)
                .entry(image.clone())
                .or_default()
                .push(pushed);
        }
        Ok(())
    }
}

/// One workload of the scene.
struct Workload {
    name: String,
    kind: Kind,
    from: Pushed,
    to: Option<Pushed>,
    /// The template as created (as the API server stored it).
    template: PodTemplateSpec,
}

struct Scene {
    builds: BuildSystem,
    harness: Harness,
    client: Client,
    ns: TestNamespace,
    repo: String,
    workloads: Vec<Workload>,
    /// The workload restarted for its containers' age.
    aged: Option<Workload>,
}

const AGED: &str = "aged";

impl Scene {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn refreshes(&self) -> Api<Refresh> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Creates a round's workloads (each on its own tag), waits for their
    /// pods, then pushes each its new digest.
    async fn round(&mut self, round: usize) -> anyhow::Result<()> {
        let mut created = Vec::new();
        for (i, kind) in [
            Kind::Promote,
            Kind::Promote,
            Kind::CanaryFails,
            Kind::PromotionFails,
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("w{round}-{i}");
            let from = push(
                &self.harness.registry,
                &self.repo,
                &name,
                &spec(&name, "v1", 48),
            )
            .await?;
            let bad = spec(&name, "bad", 1);
            // kwok crash-loops a pod whose image contains the marked digest:
            // anywhere (`crash-on`), or outside a canary (`crash-on-rollout`).
            let marker = match kind {
                Kind::Promote | Kind::Rebuilt => None,
                Kind::CanaryFails => Some("e2e.freshen.dev/crash-on"),
                Kind::PromotionFails => Some("e2e.freshen.dev/crash-on-rollout"),
            };
            let mut annotations = serde_json::Map::new();
            if let Some(marker) = marker {
                // Pushed to another tag first, to learn its digest.
                let known = push(
                    &self.harness.registry,
                    &self.repo,
                    &format!("{name}-bad"),
                    &bad,
                )
                .await?;
                annotations.insert(marker.to_owned(), known.digest.into());
            }
            let deploy = deployment_with(
                &name,
                &from.pinned(),
                2,
                serde_json::json!({
                    "metadata": {"labels": {"chaos": "canary"}},
                    "spec": {"template": {"metadata": {"annotations": annotations}}},
                }),
            )?;
            let stored = self
                .deployments()
                .create(&PostParams::default(), &deploy)
                .await?;
            let next = match kind {
                Kind::Promote | Kind::Rebuilt => spec(&name, "v2", 1),
                // The very spec the marker names: the same digest.
                Kind::CanaryFails | Kind::PromotionFails => bad,
            };
            created.push((
                Workload {
                    name,
                    kind,
                    from,
                    to: None,
                    template: template_of(&stored),
                },
                next,
            ));
        }
        let rebuilt = self.rebuilt(round).await?;
        for (w, _) in &created {
            wait_ready_pods(
                &self.client,
                &self.ns.name,
                &w.name,
                2,
                Duration::from_secs(60),
            )
            .await?;
        }
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            &rebuilt.0.name,
            1,
            Duration::from_secs(60),
        )
        .await?;
        for (mut w, next) in created {
            w.to = Some(push(&self.harness.registry, &self.repo, &w.name, &next).await?);
            self.workloads.push(w);
        }
        // The base moves on.
        let (w, base_tag) = rebuilt;
        push(
            &self.harness.registry,
            &self.repo,
            &base_tag,
            &spec(&base_tag, "v2", 1),
        )
        .await?;
        self.workloads.push(w);
        Ok(())
    }

    /// A round's workload whose base will move: its image built on a base
    /// of its own, under the rebuild policy. Returns it and its base's tag.
    async fn rebuilt(&self, round: usize) -> anyhow::Result<(Workload, String)> {
        let name = format!("w{round}-r");
        let base_tag = format!("{name}-base");
        let base = push(
            &self.harness.registry,
            &self.repo,
            &base_tag,
            &spec(&base_tag, "v1", 72),
        )
        .await?;
        let mut app = spec(&name, "v1", 48);
        app.base = Some((base.tagged.clone(), base.digest.clone()));
        let from = push(&self.harness.registry, &self.repo, &name, &app).await?;
        BuildSystem::lock(&self.builds.bases).insert(from.tagged.clone(), base.tagged.clone());
        let deploy = deployment_with(
            &name,
            &from.pinned(),
            1,
            serde_json::json!({"metadata": {"labels": {"chaos": "rebuild"}}}),
        )?;
        let stored = self
            .deployments()
            .create(&PostParams::default(), &deploy)
            .await?;
        Ok((
            Workload {
                name,
                kind: Kind::Rebuilt,
                from,
                to: None,
                template: template_of(&stored),
            },
            base_tag,
        ))
    }

    /// A workload restarted whenever its containers pass 20 s.
    async fn aged(&mut self) -> anyhow::Result<()> {
        let from = push(
            &self.harness.registry,
            &self.repo,
            AGED,
            &spec(AGED, "v1", 48),
        )
        .await?;
        let deploy = deployment_with(
            AGED,
            &from.pinned(),
            1,
            serde_json::json!({"metadata": {"annotations": {
                "freshen.dev/refresh": "enabled",
                "freshen.dev/max-container-age": "20s",
                "freshen.dev/window": "* 00:00-24:00 UTC",
            }}}),
        )?;
        let stored = self
            .deployments()
            .create(&PostParams::default(), &deploy)
            .await?;
        wait_ready_pods(
            &self.client,
            &self.ns.name,
            AGED,
            1,
            Duration::from_secs(60),
        )
        .await?;
        self.aged = Some(Workload {
            name: AGED.to_owned(),
            kind: Kind::Promote,
            from: from.clone(),
            to: Some(from),
            template: template_of(&stored),
        });
        Ok(())
    }

    /// The invariants that hold at every moment, checked while no operator
    /// runs. Returns the Refreshes seen.
    async fn check_invariants(&self, when: &str) -> anyhow::Result<Vec<Refresh>> {
        let refreshes = self.refreshes().list(&ListParams::default()).await?.items;
        let deployments = self.deployments().list(&ListParams::default()).await?.items;
        let by_name: BTreeMap<String, &Refresh> =
            refreshes.iter().map(|r| (r.name_any(), r)).collect();
        for d in &deployments {
            let labels = d.labels();
            if labels.get("freshen.dev/canary").map(String::as_str) != Some("true") {
                continue;
            }
            let owner = d
                .owner_references()
                .iter()
                .find(|o| o.kind == "Refresh" && o.controller == Some(true))
                .map(|o| o.name.clone());
            anyhow::ensure!(
                owner.as_ref().is_some_and(|o| by_name.contains_key(o)),
                "{when}: canary {} has no Refresh (owner {owner:?})",
                d.name_any()
            );
        }
        for w in self.workloads.iter().chain(self.aged.as_ref()) {
            let Some(d) = deployments.iter().find(|d| d.name_any() == w.name) else {
                anyhow::bail!("{when}: workload {} is gone", w.name);
            };
            let mut template = template_of(d);
            let image = take_image(&mut template);
            let mut original = w.template.clone();
            take_image(&mut original);
            if let Some(meta) = template.metadata.as_mut()
                && let Some(a) = meta.annotations.as_mut()
            {
                a.remove(RESTARTED_BY);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
            anyhow::ensure!(
                template == original,
                "{when}: {} changed beyond its image: {template:?} vs {original:?}",
                w.name
            );
            let mut allowed = vec![Some(w.from.pinned()), w.to.as_ref().map(Pushed::pinned)];
            allowed.extend(
                self.builds
                    .built(&w.from.tagged)
                    .iter()
                    .map(|p| Some(p.pinned())),
            );
            anyhow::ensure!(
                allowed.contains(&image),
                "{when}: {} runs {image:?}, neither its image nor the proposed one",
                w.name
            );
            let active = refreshes
                .iter()
                .any(|r| r.spec.workload == w.name && !r.progress().phase.is_terminal());
            let rejected = d
                .annotations()
                .get(REJECTED_DIGESTS)
                .cloned()
                .unwrap_or_default();
            if !active
                && let Some(image) = &image
                && let Some((_, digest)) = image.rsplit_once('@')
            {
                anyhow::ensure!(
                    !rejected.contains(digest),
                    "{when}: {} rests on {digest}, rejected for it ({rejected})",
                    w.name
                );
            }
        }
        Ok(refreshes)
    }

    /// Whether every scenario has reached its end; the workloads still
    /// under way otherwise.
    async fn unfinished(&self) -> anyhow::Result<Vec<String>> {
        let refreshes = self.refreshes().list(&ListParams::default()).await?.items;
        let deployments = self.deployments().list(&ListParams::default()).await?.items;
        let mut open = Vec::new();
        if let Some(r) = refreshes.iter().find(|r| !r.progress().phase.is_terminal()) {
            open.push(format!("{} {:?}", r.name_any(), r.progress().phase));
        }
        // An outcome is counted once its Events are published and cleared.
        if let Some(r) = refreshes
            .iter()
            .find(|r| !r.progress().pending_events.is_empty())
        {
            open.push(format!("{} has Events to publish", r.name_any()));
        }
        if let Some(c) = deployments
            .iter()
            .find(|d| d.labels().get("freshen.dev/canary").is_some())
        {
            open.push(format!("canary {}", c.name_any()));
        }
        let rebuilds = Api::<Rebuild>::namespaced(self.client.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await?
            .items;
        if let Some(r) = rebuilds.iter().find(|r| !r.progress().phase.is_terminal()) {
            open.push(format!("rebuild {} {}", r.name_any(), r.progress().phase));
        }
        for w in &self.workloads {
            let want = match w.kind {
                Kind::Promote | Kind::Rebuilt => Phase::Succeeded,
                Kind::CanaryFails | Kind::PromotionFails => Phase::RolledBack,
            };
            let done = refreshes
                .iter()
                .any(|r| r.spec.workload == w.name && r.progress().phase == want);
            if !done {
                let seen: Vec<String> = refreshes
                    .iter()
                    .filter(|r| r.spec.workload == w.name)
                    .map(|r| format!("{:?}: {}", r.progress().phase, r.progress().message))
                    .collect();
                open.push(format!("{} not yet {want:?} (Refreshes: {seen:?})", w.name));
            }
        }
        Ok(open)
    }
}

/// A distinct image per workload and version.
fn spec(workload: &str, version: &str, hours_ago: i64) -> ImageSpec {
    ImageSpec {
        content: format!("{workload}-{version}"),
        ..ImageSpec::built_at(Utc::now() - TimeDelta::hours(hours_ago))
    }
}

fn template_of(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// Removes and returns the first container's image.
fn take_image(template: &mut PodTemplateSpec) -> Option<String> {
    template
        .spec
        .as_mut()
        .and_then(|s| s.containers.first_mut())
        .and_then(|c| c.image.take())
}

/// Rebuilds of the Deployments labelled `chaos=rebuild` when their base
/// moves, with a Job pipeline (kwok completes its pod at once), then a
/// canary like the others; their tags are not followed, so every refresh
/// of theirs comes from a rebuild.
fn rebuild_policy() -> RefreshPolicySpec {
    let mut spec = canary_policy(("chaos", "rebuild"), "1s", 2, "30s");
    spec.refresh.follow_tag = None;
    spec.pipelines = PolicyPipelines {
        pipelines: vec![Pipeline {
            name: "build".into(),
            job: Some(JobPipeline {
                namespace: None,
                template: serde_json::json!({
                    "backoffLimit": 0,
                    "template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "build",
                            "image": "registry.example/builder:1",
                            "args": ["build", "$(image)", "from", "$(image.digest)",
                                     "on", "$(base.newDigest)"],
                        }],
                    }},
                }),
            }),
            tekton: None,
            webhook: None,
            images: Vec::new(),
            allow_annotated_base: None,
        }],
        rebuild: Some(RebuildSettings {
            pipeline: "build".into(),
            selectable: None,
            triggers: Some(vec![RebuildOn::BaseMoved]),
            timeout: Some("2m".into()),
            backoff: Some("5s".into()),
        }),
    };
    spec
}

/// `freshen_refreshes_total` by (reason, outcome) in a scrape.
fn outcomes(text: &str) -> BTreeMap<(String, String), u64> {
    let mut counted = BTreeMap::new();
    for reason in ["NewDigest", "BaseMoved", "ImageTooOld", "ContainerTooOld"] {
        for outcome in ["Succeeded", "RolledBack", "Failed"] {
            let series =
                format!(r#"freshen_refreshes_total{{outcome="{outcome}",reason="{reason}"}}"#);
            let n = metric_value(text, &series).unwrap_or(0.0) as u64;
            if n > 0 {
                *counted
                    .entry((reason.to_owned(), outcome.to_owned()))
                    .or_insert(0) += n;
            }
        }
    }
    counted
}

/// Adds `refreshes` to those ever seen, with their latest phase.
fn remember(ever: &mut BTreeMap<String, (String, Phase)>, refreshes: &[Refresh]) {
    for r in refreshes {
        ever.insert(
            r.name_any(),
            (r.spec.reason.as_str().to_owned(), r.progress().phase),
        );
    }
}

fn seed() -> u64 {
    std::env::var("FRESHEN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(freshen_e2e::rand_suffix()))
}

#[tokio::test]
async fn refreshes_keep_every_promise_while_the_operator_is_killed_at_random() -> anyhow::Result<()>
{
    init_tls();
    let seed = seed();
    let kills: usize = std::env::var("FRESHEN_CHAOS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    eprintln!("chaos: seed {seed} (FRESHEN_CHAOS_SEED={seed} reproduces), {kills} kills");
    let mut rng = Rng(seed);
    let harness = Harness::load()?;
    let client = harness.client().await?;
    let ns = TestNamespace::create(&harness, &client, "chaos").await?;
    let repo = format!("e2e/{}", ns.name);
    let mut scene = Scene {
        builds: BuildSystem::default(),
        harness,
        client,
        ns,
        repo,
        workloads: Vec::new(),
        aged: None,
    };
    Api::<RefreshPolicy>::namespaced(scene.client.clone(), &scene.ns.name)
        .create(
            &PostParams::default(),
            &RefreshPolicy::new("chaos", canary_policy(("chaos", "canary"), "1s", 2, "30s")),
        )
        .await?;
    Api::<RefreshPolicy>::namespaced(scene.client.clone(), &scene.ns.name)
        .create(
            &PostParams::default(),
            &RefreshPolicy::new("rebuild", rebuild_policy()),
        )
        .await?;
    scene.aged().await?;
    let build_system = {
        let (builds, harness, jobs) = (
            scene.builds.clone(),
            Harness::load()?,
            Api::<Job>::namespaced(scene.client.clone(), &scene.ns.name),
        );
        tokio::spawn(async move {
            loop {
                if let Err(e) = builds.serve(&harness, &jobs).await {
                    eprintln!("chaos: the build system failed: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let namespace = scene.ns.name.clone();
    let args = [
        "--poll-interval",
        "2s",
        "--namespace",
        namespace.as_str(),
        "--leader-elect-lease-duration",
        "3s",
    ];
    let mut operator = Operator::start(&scene.harness, &args).await?;
    let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
    // Every Refresh ever seen, with its last phase: finished ones beyond
    // the history limit are pruned, so the end alone would undercount.
    let mut ever: BTreeMap<String, (String, Phase)> = BTreeMap::new();
    let started = tokio::time::Instant::now();
    // A round of new refreshes every 5 kills, so kills land among
    // refreshes in every phase all along.
    for kill in 0..kills {
        if kill % 5 == 0 {
            scene.round(kill / 5).await?;
        }
        tokio::time::sleep(rng.millis(300, 4000)).await;
        for (k, n) in outcomes(&operator.scrape().await?) {
            *counted.entry(k).or_insert(0) += n;
        }
        operator.kill()?;
        drop(operator);
        let now = scene
            .check_invariants(&format!("seed {seed}, after kill {}", kill + 1))
            .await?;
        eprintln!(
            "chaos: kill {} at {:.1}s: invariants hold over {} Refreshes",
            kill + 1,
            started.elapsed().as_secs_f64(),
            now.len()
        );
        remember(&mut ever, &now);
        operator = Operator::start(&scene.harness, &args).await?;
    }

    // Let the last operator finish everything; the aged workload stops
    // asking for restarts.
    let relaxed = serde_json::json!({"metadata": {"annotations": {"freshen.dev/max-container-age": "8760h"}}});
    scene
        .deployments()
        .patch(AGED, &PatchParams::default(), &Patch::Merge(relaxed))
        .await?;
    let scene_ref = &scene;
    wait_for(
        &format!("seed {seed}: every refresh to end"),
        Duration::from_secs(180),
        Duration::from_millis(250),
        || async move {
            let open = scene_ref.unfinished().await?;
            if open.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("{open:?}")
            }
        },
    )
    .await?;
    for (k, n) in outcomes(&operator.scrape().await?) {
        *counted.entry(k).or_insert(0) += n;
    }
    drop(operator);
    build_system.abort();
    // Rebuilds: one per moved base, each Succeeded, one Job each.
    let rebuilt = scene
        .workloads
        .iter()
        .filter(|w| w.kind == Kind::Rebuilt)
        .count();
    let rebuilds = Api::<Rebuild>::namespaced(scene.client.clone(), &scene.ns.name)
        .list(&ListParams::default())
        .await?
        .items;
    assert_eq!(
        rebuilds.len(),
        rebuilt,
        "seed {seed}: one Rebuild per moved base"
    );
    for r in &rebuilds {
        assert_eq!(
            r.progress().phase,
            RebuildPhase::Succeeded,
            "seed {seed}: {} {}",
            r.name_any(),
            r.progress().message
        );
    }
    let jobs = Api::<Job>::namespaced(scene.client.clone(), &scene.ns.name)
        .list(&ListParams::default())
        .await?
        .items;
    assert_eq!(
        jobs.len(),
        rebuilt,
        "seed {seed}: one pipeline run per change: {:?}",
        jobs.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );
    let refreshes = scene
        .check_invariants(&format!("seed {seed}, at the end"))
        .await?;
    remember(&mut ever, &refreshes);
    let total = ever.len();

    // Outcomes: each Refresh's scenario, and no outcome counted twice.
    let mut terminal: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (reason, phase) in ever.values() {
        *terminal
            .entry((reason.clone(), phase.as_str().to_owned()))
            .or_insert(0) += 1;
    }
    for w in &scene.workloads {
        let mine: Vec<&Refresh> = refreshes
            .iter()
            .filter(|r| r.spec.workload == w.name)
            .collect();
        let phases: BTreeSet<Phase> = mine.iter().map(|r| r.progress().phase).collect();
        let image = take_image(&mut template_of(&scene.deployments().get(&w.name).await?));
        let to = w.to.as_ref().map(Pushed::pinned);
        match w.kind {
            Kind::Rebuilt => {
                let built = scene.builds.built(&w.from.tagged);
                assert_eq!(
                    built.len(),
                    1,
                    "seed {seed}: one pipeline run for {}",
                    w.name
                );
                assert_eq!(
                    phases,
                    BTreeSet::from([Phase::Succeeded]),
                    "seed {seed}: {}",
                    w.name
                );
                assert_eq!(
                    image,
                    built.first().map(Pushed::pinned),
                    "seed {seed}: {} runs its rebuild",
                    w.name
                );
            }
            Kind::Promote => {
                assert_eq!(
                    phases,
                    BTreeSet::from([Phase::Succeeded]),
                    "seed {seed}: {}",
                    w.name
                );
                assert_eq!(image, to, "seed {seed}: {} promoted", w.name);
            }
            Kind::CanaryFails | Kind::PromotionFails => {
                assert_eq!(
                    phases,
                    BTreeSet::from([Phase::RolledBack]),
                    "seed {seed}: {}",
                    w.name
                );
                assert_eq!(
                    image,
                    Some(w.from.pinned()),
                    "seed {seed}: {} restored",
                    w.name
                );
                let rejected = scene
                    .deployments()
                    .get(&w.name)
                    .await?
                    .annotations()
                    .get(REJECTED_DIGESTS)
                    .cloned()
                    .unwrap_or_default();
                let digest = w.to.as_ref().map(|p| p.digest.clone()).unwrap_or_default();
                assert!(
                    rejected.contains(&digest),
                    "seed {seed}: {} rejected {rejected}",
                    w.name
                );
            }
        }
        assert_eq!(mine.len(), 1, "seed {seed}: one Refresh for {}", w.name);
    }
    for (key, n) in &counted {
        let stored = terminal.get(key).copied().unwrap_or(0);
        assert!(
            *n <= stored,
            "seed {seed}: {key:?} counted {n} times for {stored} Refreshes"
        );
    }
    let counted_sum: u64 = counted.values().sum();
    let terminal_sum: u64 = terminal.values().sum();
    eprintln!(
        "chaos: seed {seed}: {kills} kills survived; {total} Refreshes, all terminal; \
         outcomes counted {counted_sum} of {terminal_sum} (by process scrapes before each kill)"
    );

    // Events: every phase announced at least once, and at most once per
    // operator that could have published it.
    let events: Api<Event> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    let events = events.list(&ListParams::default()).await?.items;
    let processes = u32::try_from(kills + 1)?;
    for r in &refreshes {
        let name = r.name_any();
        let mut published: BTreeMap<&str, u32> = BTreeMap::new();
        for e in &events {
            let about_it = e.regarding.as_ref().is_some_and(|o| {
                o.kind.as_deref() == Some("Refresh") && o.name.as_deref() == Some(name.as_str())
            });
            if let (true, Some(reason)) = (about_it, e.reason.as_deref()) {
                let count = e
                    .series
                    .as_ref()
                    .map_or(1, |s| u32::try_from(s.count).unwrap_or(1));
                *published.entry(reason).or_insert(0) += count;
            }
        }
        let expected: &[&str] = match (r.spec.reason, r.progress().phase) {
            (Reason::ContainerTooOld, _) => &["RefreshSucceeded"],
            (_, Phase::Succeeded) => &["CanaryStarted", "Promoting", "RefreshSucceeded"],
            (_, _) => &["CanaryStarted", "RollingBack", "RolledBack"],
        };
        for reason in expected {
            assert!(
                published.contains_key(reason),
                "seed {seed}: {name} never announced {reason}: {published:?}"
            );
        }
        for (reason, n) in &published {
            assert!(
                *n <= processes,
                "seed {seed}: {name} {reason} published {n} times by {processes} operators"
            );
        }
    }
    Ok(())
}
