//! Golden-file tests over real-world manifests: each edit's output is
//! compared byte for byte with a `.want.yaml` file, so any change beyond the
//! value (a comment, a quote, a blank line, a `---`) fails.

use super::*;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn golden(name: &str) -> (String, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/gitops");
    let read = |f: String| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
    (
        read(format!("{name}.yaml")),
        read(format!("{name}.want.yaml")),
    )
}

fn running(image: &str) -> ImageReference {
    ImageReference::parse(image).unwrap_or_else(|e| panic!("{image}: {e}"))
}

fn subject<'a>(name: &'a str, container: &'a str, running: &'a ImageReference) -> Subject<'a> {
    Subject {
        kind: "Deployment",
        name,
        namespace: "apps",
        container,
        running,
    }
}

fn changed(e: Result<Edited, EditError>) -> String {
    match e {
        Ok(Edited::Changed(s)) => s,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn a_manifest_changes_only_the_containers_image() {
    let (input, want) = golden("deployment");
    let run = running("ghcr.io/stefanprodan/podinfo:6.5.0");
    let to = format!("ghcr.io/stefanprodan/podinfo:6.5.1@{D1}");
    let out = changed(set_image(
        &input,
        &Field::Manifest,
        &subject("podinfo", "podinfod", &run),
        &to,
    ));
    assert_eq!(out, want);
    // Again: nothing to do.
    assert_eq!(
        set_image(
            &out,
            &Field::Manifest,
            &subject("podinfo", "podinfod", &run),
            &to
        ),
        Ok(Edited::Unchanged)
    );
    // And back, to the byte.
    let back = changed(set_image(
        &out,
        &Field::Manifest,
        &subject("podinfo", "podinfod", &run),
        "ghcr.io/stefanprodan/podinfo:6.5.0",
    ));
    assert_eq!(back, input);
}

#[test]
fn a_manifest_keeps_the_quoting_of_the_value() {
    let (input, _) = golden("deployment");
    let run = running("busybox:1.36");
    let out = changed(set_image(
        &input,
        &Field::Manifest,
        &subject("podinfo", "sidecar", &run),
        &format!("docker.io/library/busybox:1.37@{D2}"),
    ));
    let diff: Vec<_> = input
        .lines()
        .zip(out.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        diff,
        [(
            "        image: 'docker.io/library/busybox:1.36'",
            format!("        image: 'docker.io/library/busybox:1.37@{D2}'").as_str()
        )]
    );
}

#[test]
fn a_manifest_without_the_workload_or_its_image_is_not_here() {
    let (input, _) = golden("deployment");
    let run = running("ghcr.io/stefanprodan/podinfo:6.5.0");
    let to = format!("ghcr.io/stefanprodan/podinfo:6.5.1@{D1}");
    for (name, container) in [("other", "podinfod"), ("podinfo", "nope")] {
        assert!(matches!(
            set_image(
                &input,
                &Field::Manifest,
                &subject(name, container, &run),
                &to
            ),
            Err(EditError::NotHere(_))
        ));
    }
    // A container that runs another repository is not rewritten.
    let elsewhere = running("quay.io/other/app:1");
    assert!(matches!(
        set_image(
            &input,
            &Field::Manifest,
            &subject("podinfo", "podinfod", &elsewhere),
            "quay.io/other/app:2"
        ),
        Err(EditError::NotHere(_))
    ));
}

#[test]
fn a_kustomization_gets_new_tag_and_digest_fields() {
    let (input, want) = golden("kustomization");
    let run = running("registry.example.com/mirror/podinfo:6.5.0");
    let to = format!("registry.example.com/mirror/podinfo:6.5.1@{D1}");
    let s = subject("podinfo", "podinfod", &run);
    let out = changed(set_image(&input, &Field::Kustomize, &s, &to));
    assert_eq!(out, want);
    assert_eq!(
        set_image(&out, &Field::Kustomize, &s, &to),
        Ok(Edited::Unchanged)
    );
    // The revert puts the tag back and takes the digest line out.
    let back = changed(set_image(
        &out,
        &Field::Kustomize,
        &s,
        "registry.example.com/mirror/podinfo:6.5.0",
    ));
    assert_eq!(back, input);
    // An entry renamed elsewhere is matched by its rendered name only.
    let unmirrored = running("ghcr.io/stefanprodan/podinfo:6.5.0");
    assert!(matches!(
        set_image(
            &input,
            &Field::Kustomize,
            &subject("podinfo", "podinfod", &unmirrored),
            "ghcr.io/stefanprodan/podinfo:6.5.1"
        ),
        Err(EditError::NotHere(_))
    ));
}

#[test]
fn helm_values_get_tag_and_digest_or_a_tag_that_carries_it() {
    let (input, want) = golden("values");
    let nginx = running("docker.io/bitnami/nginx:1.27.3-debian-12-r0");
    let out = changed(set_image(
        &input,
        &Field::Helm(vec!["image".into()]),
        &subject("web", "nginx", &nginx),
        &format!("docker.io/bitnami/nginx:1.27.4-debian-12-r0@{D1}"),
    ));
    let busybox = running("busybox:1.36");
    let out = changed(set_image(
        &out,
        &Field::Helm(vec!["sidecar".into(), "image".into()]),
        &subject("web", "sidecar", &busybox),
        &format!("docker.io/library/busybox:1.37@{D2}"),
    ));
    assert_eq!(out, want);
    // A path whose repository is another image is refused.
    assert!(matches!(
        set_image(
            &input,
            &Field::Helm(vec!["image".into()]),
            &subject("web", "sidecar", &busybox),
            "busybox:1.37"
        ),
        Err(EditError::NotHere(_))
    ));
}

#[test]
fn values_that_cannot_be_rewritten_in_place_are_refused_with_the_reason() {
    let run = running("nginx:1");
    let s = subject("web", "app", &run);
    let block = "image:\n  repository: nginx\n  tag: |\n    1\n";
    let e = set_image(
        block,
        &Field::Helm(vec!["image".into()]),
        &s,
        &format!("nginx:2@{D1}"),
    );
    assert!(
        matches!(e, Err(EditError::Yaml(YamlError::Unsupported(ref m))) if m.contains("block scalar")),
        "{e:?}"
    );
    let flow = "images: [{name: nginx, newTag: '1'}]\n";
    let e = set_image(flow, &Field::Kustomize, &s, &format!("nginx:2@{D1}"));
    assert!(
        matches!(e, Err(EditError::Yaml(YamlError::Unsupported(ref m))) if m.contains("flow style")),
        "{e:?}"
    );
    assert!(matches!(
        set_image("a: [", &Field::Manifest, &s, "nginx:2"),
        Err(EditError::Yaml(YamlError::Syntax(_)))
    ));
    assert!(set_image("a: 1\n", &Field::Manifest, &s, "not an image!").is_err());
}

#[test]
fn only_what_the_policys_canary_proved_is_committed() {
    use crate::plan::GitOpsAction::{Commit, Patch};
    use crate::rollout::Strategy::{Canary, Rolling};
    assert_eq!(admit(Some(Commit), Canary, Canary, true), Ok(()));
    assert_eq!(admit(Some(Commit), Rolling, Rolling, false), Ok(()));
    // A Refresh written to skip the canary its policy asks for.
    assert!(admit(Some(Commit), Canary, Rolling, false).is_err_and(|e| e.contains("ran none")));
    assert!(admit(Some(Commit), Canary, Canary, false).is_err());
    // The policy changed since.
    for policy in [None, Some(Patch)] {
        assert!(admit(policy, Canary, Canary, true).is_err_and(|e| e.contains("no longer")));
    }
}

#[test]
fn only_kinds_whose_canary_runs_beside_them_are_promoted_through_git() {
    use crate::kind::Kind;
    for kind in Kind::ALL {
        let ok = promotable(kind).is_ok();
        assert_eq!(
            ok,
            matches!(kind, Kind::Deployment | Kind::CronJob),
            "{kind}"
        );
    }
    assert!(
        promotable(Kind::StatefulSet)
            .is_err_and(|e| e.contains("StatefulSet's canary runs inside it"))
    );
}

#[test]
fn a_helm_releases_inline_values_change_in_its_own_document_only() {
    let (input, want) = golden("helmrelease");
    let run = running("ghcr.io/stefanprodan/podinfo:6.5.0");
    let field = |namespace: &str| Field::HelmRelease {
        name: "podinfo".into(),
        namespace: namespace.into(),
        path: vec!["image".into()],
    };
    let to = format!("ghcr.io/stefanprodan/podinfo:6.5.1@{D1}");
    // The chart renders repository:tag, so the digest rides in the tag;
    // the staging release of the same name is not touched.
    let out = changed(set_image(
        &input,
        &field("apps"),
        &subject("podinfo", "podinfod", &run),
        &to,
    ));
    assert_eq!(out, want);
    assert_eq!(
        set_image(
            &out,
            &field("apps"),
            &subject("podinfo", "podinfod", &run),
            &to
        ),
        Ok(Edited::Unchanged)
    );
    let back = changed(set_image(
        &out,
        &field("apps"),
        &subject("podinfo", "podinfod", &run),
        "ghcr.io/stefanprodan/podinfo:6.5.0",
    ));
    assert_eq!(back, input);
    // A release that is not in the file, or values without the path, are
    // not here (the writer looks in the next file).
    for missing in [
        Field::HelmRelease {
            name: "other".into(),
            namespace: "apps".into(),
            path: vec!["image".into()],
        },
        Field::HelmRelease {
            name: "podinfo".into(),
            namespace: "apps".into(),
            path: vec!["app".into(), "image".into()],
        },
    ] {
        assert!(
            matches!(
                set_image(&input, &missing, &subject("podinfo", "podinfod", &run), &to),
                Err(EditError::NotHere(_))
            ),
            "{missing}"
        );
    }
}
