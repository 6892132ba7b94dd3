use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/forge/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_api_is_found_from_the_repository_url() {
    let gh = locate(Provider::GitHub, "https://github.com/octo-org/apps.git").unwrap();
    assert_eq!(
        (gh.api.as_str(), gh.owner.as_str(), gh.name.as_str()),
        ("https://api.github.com", "octo-org", "apps")
    );
    let ghe = locate(Provider::GitHub, "https://ghe.example.com/team/apps").unwrap();
    assert_eq!(ghe.api, "https://ghe.example.com/api/v3");
    let gl = locate(
        Provider::GitLab,
        "https://gitlab.example.com/platform/team-a/apps.git",
    )
    .unwrap();
    assert_eq!(
        (gl.api.as_str(), gl.owner.as_str()),
        ("https://gitlab.example.com/api/v4", "platform/team-a")
    );
    let gt = locate(Provider::Gitea, "http://127.0.0.1:15300/freshen/apps.git").unwrap();
    assert_eq!(gt.api, "http://127.0.0.1:15300/api/v1");
    // SSH URLs: the API is on the same host, over HTTPS.
    let ssh = locate(
        Provider::Gitea,
        "ssh://git@git.example.com:2222/team/apps.git",
    )
    .unwrap();
    assert_eq!(
        (ssh.api.as_str(), ssh.owner.as_str(), ssh.name.as_str()),
        ("https://git.example.com/api/v1", "team", "apps")
    );
    let scp = locate(Provider::GitHub, "git@github.com:octo-org/apps.git").unwrap();
    assert_eq!(scp.api, "https://api.github.com");
}

#[test]
fn repository_urls_that_name_no_plain_repository_are_refused() {
    for (provider, url) in [
        (Provider::GitHub, "https://github.com/apps"),
        (Provider::GitHub, "https://github.com/a/b/c"),
        (
            Provider::Gitea,
            "https://git.example.com/team/..%2f..%2fadmin",
        ),
        (Provider::Gitea, "https://git.example.com/team/a?x=1"),
        (Provider::GitLab, "file:///srv/git/apps"),
        (Provider::GitLab, "https://gitlab.example.com/"),
    ] {
        let err = locate(provider, url).unwrap_err();
        assert!(err.0.contains(url), "{err}");
        assert!(err.0.contains("expected https://"), "{err}");
    }
}

#[test]
fn opening_names_the_head_with_its_owner_and_labels_by_name() {
    let proposal = Proposal {
        head: "freshen/3f0c2a1b9e7d".into(),
        base: "main".into(),
        title: "t".into(),
        body: "b".into(),
        labels: vec!["freshen".into(), "bad,label".into(), "automated".into()],
    };
    let gt = locate(Provider::Gitea, "http://127.0.0.1:15300/freshen/apps.git").unwrap();
    let call = gt.open(&proposal);
    assert_eq!(call.method, Method::Post);
    assert_eq!(
        call.url,
        "http://127.0.0.1:15300/api/v1/repos/freshen/apps/pulls"
    );
    let body = call.body.unwrap();
    assert_eq!(body["head"], "freshen:freshen/3f0c2a1b9e7d");
    assert_eq!(body["base"], "main");
    let label = gt.label(7, &proposal.labels).unwrap();
    assert_eq!(
        label.url,
        "http://127.0.0.1:15300/api/v1/repos/freshen/apps/issues/7/labels"
    );
    // A label with a comma is never sent (GitLab would split it).
    assert_eq!(
        label.body.unwrap()["labels"],
        json!(["freshen", "automated"])
    );

    let gl = locate(
        Provider::GitLab,
        "https://gitlab.example.com/platform/team-a/apps",
    )
    .unwrap();
    let call = gl.open(&proposal);
    assert_eq!(
        call.url,
        "https://gitlab.example.com/api/v4/projects/platform%2Fteam-a%2Fapps/merge_requests"
    );
    let body = call.body.unwrap();
    assert_eq!(body["source_branch"], "freshen/3f0c2a1b9e7d");
    assert_eq!(body["labels"], "freshen,automated");
    assert!(gl.label(12, &proposal.labels).is_none());
    assert_eq!(
        gl.get(12).url,
        "https://gitlab.example.com/api/v4/projects/platform%2Fteam-a%2Fapps/merge_requests/12"
    );
    let gh = locate(Provider::GitHub, "https://github.com/octo-org/apps").unwrap();
    assert_eq!(
        gh.find_open("freshen/x y", "main").url,
        "https://api.github.com/repos/octo-org/apps/pulls?state=open&head=octo-org:freshen%2Fx%20y&base=main"
    );
    assert_eq!(gh.close(3).body.unwrap()["state"], "closed");
    assert_eq!(gl.close(3).method, Method::Put);
}

#[test]
fn tokens_go_in_each_providers_header() {
    assert_eq!(
        auth_header(Provider::GitHub, "t"),
        ("authorization", "Bearer t".to_owned())
    );
    assert_eq!(
        auth_header(Provider::GitLab, "t"),
        ("private-token", "t".to_owned())
    );
    assert_eq!(
        auth_header(Provider::Gitea, "t"),
        ("authorization", "token t".to_owned())
    );
}

#[test]
fn gitea_answers_recorded_from_the_harness_server_are_read() {
    let open = parse(Provider::Gitea, &fixture("gitea-pull-open.json")).unwrap();
    assert_eq!((open.number, open.state), (2, PullState::Open));
    assert_eq!(open.head, "freshen/x");
    assert_eq!(open.url, "http://127.0.0.1:15300/freshen/apps/pulls/2");
    let merged = parse(Provider::Gitea, &fixture("gitea-pull-merged.json")).unwrap();
    assert_eq!(merged.state, PullState::Merged);
    assert_eq!(
        merged.merged_at.unwrap().to_rfc3339(),
        "2026-12-04T08:51:35+00:00"
    );
    let closed = parse(Provider::Gitea, &fixture("gitea-pull-closed.json")).unwrap();
    assert_eq!((closed.state, closed.merged_at), (PullState::Closed, None));
}

#[test]
fn github_and_gitlab_answers_are_read() {
    let merged = parse(Provider::GitHub, &fixture("github-pull-merged.json")).unwrap();
    assert_eq!((merged.number, merged.state), (1347, PullState::Merged));
    // Closed unmerged, though GitHub fills merge_commit_sha with a test
    // merge: merged_at decides.
    let closed = parse(Provider::GitHub, &fixture("github-pull-closed.json")).unwrap();
    assert_eq!(closed.state, PullState::Closed);
    let found = parse_open(
        Provider::GitHub,
        &fixture("github-pulls-open.json"),
        "freshen/1122aabbccdd",
    )
    .unwrap()
    .unwrap();
    assert_eq!(found.number, 1349);
    assert!(
        parse_open(
            Provider::GitHub,
            &fixture("github-pulls-open.json"),
            "freshen/zz"
        )
        .unwrap()
        .is_none()
    );

    let opened = parse(
        Provider::GitLab,
        &fixture("gitlab-merge-request-opened.json"),
    )
    .unwrap();
    assert_eq!((opened.number, opened.state), (12, PullState::Open));
    assert_eq!(opened.head, "freshen/3f0c2a1b9e7d");
    let merged = parse(
        Provider::GitLab,
        &fixture("gitlab-merge-request-merged.json"),
    )
    .unwrap();
    assert_eq!(merged.state, PullState::Merged);
    let closed = parse(
        Provider::GitLab,
        &fixture("gitlab-merge-request-closed.json"),
    )
    .unwrap();
    assert_eq!(closed.state, PullState::Closed);
}

#[test]
fn answers_that_are_not_a_pull_request_are_errors_naming_the_provider() {
    for (provider, body) in [
        (Provider::Gitea, &b"<html>502 Bad Gateway</html>"[..]),
        (Provider::GitHub, &br#"{"message":"Not Found"}"#[..]),
        (
            Provider::GitLab,
            &br#"{"iid":1,"web_url":"u","state":"weird"}"#[..],
        ),
        (
            Provider::GitHub,
            &br#"{"number":-1,"html_url":"u","state":"open"}"#[..],
        ),
    ] {
        let err = parse(provider, body).unwrap_err();
        assert!(err.0.contains(provider.as_str()), "{err}");
    }
    assert!(parse_open(Provider::Gitea, br#"{"not":"a list"}"#, "x").is_err());
}

#[test]
fn bodies_carry_the_canary_analysis_and_stay_within_the_limit() {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let checks = vec![Row {
        time: t("2026-12-04T09:00:01Z"),
        ready: 1,
        desired: 1,
        restarts: 0,
        metric: Some(0.5),
        verdict: "Pass",
        message: "1/1 Ready | ok",
    }];
    let section = describe(&Section {
        workload: "Deployment shop/web",
        container: "app",
        from: "r/web:v1@sha256:11",
        to: "r/web:v1@sha256:22",
        reason: "BaseMoved",
        refresh: "web-app-abc",
        checks: &checks,
    });
    assert!(
        section.contains("### Deployment shop/web `app`"),
        "{section}"
    );
    assert!(
        section.contains("| 1 | 09:00:01 | 1/1 | 0 | 0.5 | Pass | 1/1 Ready \\| ok |"),
        "{section}"
    );
    let whole = body(&promotion_intro(1), &[section]);
    assert!(
        whole.starts_with("freshen proved this image in a canary"),
        "{whole}"
    );
    let huge = body(&promotion_intro(2), &["x".repeat(MAX_BODY), "y".into()]);
    assert!(huge.len() <= MAX_BODY, "{}", huge.len());
    assert!(huge.ends_with("_(cut at 60000 bytes)_\n"));
}

#[test]
fn labels_are_checked() {
    assert!(check_labels(&["freshen".into(), "automated".into()]).is_ok());
    assert!(check_labels(&["a,b".into()]).unwrap_err().contains("a,b"));
    assert!(check_labels(&vec!["l".to_owned(); 11]).is_err());
    assert!(check_labels(&["x".repeat(51)]).is_err());
}

#[test]
fn a_merge_time_is_never_later_than_its_reading() {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let seen = t("2026-12-04T10:00:00Z");
    assert_eq!(
        seen_merged_at(Some(t("2027-12-04T10:00:00Z")), seen),
        Some(seen)
    );
    let past = t("2026-12-04T09:59:00Z");
    assert_eq!(seen_merged_at(Some(past), seen), Some(past));
    assert_eq!(seen_merged_at(None, seen), None);
}

#[test]
fn a_revert_goes_the_way_its_promotion_went() {
    let gh = Some(Provider::GitHub);
    // A promotion follows the policy.
    assert_eq!(proposed_through(false, None, gh), gh);
    assert_eq!(proposed_through(false, gh, None), None);
    // A revert follows its promotion, even when the policy changed since.
    assert_eq!(proposed_through(true, gh, None), gh);
    assert_eq!(proposed_through(true, None, gh), None);
}
