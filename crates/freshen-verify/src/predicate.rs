//! Reading the predicates freshen checks, once their statement verified:
//! SLSA provenance (v1, and v0.2 which many builders still write) for its
//! builder and source, and vulnerability scans (cosign's `vuln` predicate
//! carrying a Trivy or Grype report, in-toto's `vulns`) for counts by
//! severity. What they must say is `freshen_core::verify`'s decision.
//!
//! A predicate arrives inside a bundle already capped at
//! [`crate::MAX_BUNDLE`]; each list is still read only up to
//! [`MAX_FINDINGS`] entries, and an unexpected shape is an error naming the
//! field, never a panic.

use freshen_core::verify::{
    COSIGN_VULN, Findings, IN_TOTO_VULNS, Provenance, SLSA_PROVENANCE_V1, SLSA_PROVENANCE_V02,
    Severity,
};
use serde_json::Value;

/// Findings read from one scan, at most.
pub const MAX_FINDINGS: usize = 100_000;
/// Source entries kept from one provenance, at most.
const MAX_SOURCES: usize = 16;

/// The builder and sources a provenance predicate names.
pub fn provenance(predicate_type: &str, predicate: &Value) -> Result<Provenance, String> {
    let text = |v: &Value| v.as_str().map(|s| s.chars().take(1024).collect::<String>());
    let mut sources = Vec::new();
    let builder_id = match predicate_type {
        SLSA_PROVENANCE_V1 => {
            let definition = &predicate["buildDefinition"];
            let external = &definition["externalParameters"];
            for v in [
                &external["source"],
                &external["source"]["uri"],
                &external["repository"],
                &external["workflow"]["repository"],
            ] {
                sources.extend(text(v));
            }
            if let Some(deps) = definition["resolvedDependencies"].as_array() {
                sources.extend(
                    deps.iter()
                        .take(MAX_SOURCES)
                        .filter_map(|d| text(&d["uri"])),
                );
            }
            text(&predicate["runDetails"]["builder"]["id"])
        }
        SLSA_PROVENANCE_V02 => {
            sources.extend(text(&predicate["invocation"]["configSource"]["uri"]));
            if let Some(materials) = predicate["materials"].as_array() {
                sources.extend(
                    materials
                        .iter()
                        .take(MAX_SOURCES)
                        .filter_map(|m| text(&m["uri"])),
                );
            }
            text(&predicate["builder"]["id"])
        }
        other => return Err(format!("predicate type {other:?} is not SLSA provenance")),
    };
    if builder_id.is_none() {
        return Err(match predicate_type {
            SLSA_PROVENANCE_V1 => "runDetails.builder.id is missing".into(),
            _ => "builder.id is missing".into(),
        });
    }
    let mut sources: Vec<String> = sources.iter().map(|s| repository(s)).collect();
    sources.dedup();
    sources.truncate(MAX_SOURCES);
    Ok(Provenance {
        builder_id,
        sources,
    })
}

/// A source URI as a repository: `git+https://host/org/repo@refs/heads/main`
/// is `https://host/org/repo`.
fn repository(uri: &str) -> String {
    let uri = uri.strip_prefix("git+").unwrap_or(uri);
    let scheme = uri.find("://").map_or(0, |at| at + 3);
    let end = uri[scheme..].find('@').map_or(uri.len(), |at| scheme + at);
    uri[..end].trim_end_matches(".git").to_owned()
}

/// The findings of a vulnerability scan by severity.
pub fn findings(predicate_type: &str, predicate: &Value) -> Result<Findings, String> {
    let result = &predicate["scanner"]["result"];
    let mut findings = Findings::default();
    if predicate_type.starts_with(IN_TOTO_VULNS) || result.is_array() {
        let Some(list) = result.as_array() else {
            return Err("scanner.result is not a list of vulnerabilities".into());
        };
        for entry in list.iter().take(MAX_FINDINGS) {
            // The spec's example puts them at the entry; its field list
            // under `vulnerability`: read either.
            let v = entry.get("vulnerability").unwrap_or(entry);
            let worst = match &v["severity"] {
                Value::Array(scores) => scores
                    .iter()
                    .take(8)
                    .map(|s| score(&s["score"]))
                    .min()
                    .unwrap_or(Severity::Unknown),
                other => score(other),
            };
            findings.add(v["id"].as_str().unwrap_or(""), worst);
        }
        return Ok(findings);
    }
    if predicate_type != COSIGN_VULN {
        return Err(format!(
            "predicate type {predicate_type:?} is not a vulnerability scan"
        ));
    }
    if let Some(results) = result["Results"].as_array() {
        // Trivy's JSON report.
        let mut read = 0;
        for target in results.iter().take(MAX_FINDINGS) {
            let Some(vulns) = target["Vulnerabilities"].as_array() else {
                continue;
            };
            for v in vulns.iter().take(MAX_FINDINGS - read) {
                findings.add(
                    v["VulnerabilityID"].as_str().unwrap_or(""),
                    score(&v["Severity"]),
                );
            }
            read += vulns.len().min(MAX_FINDINGS - read);
        }
        return Ok(findings);
    }
    if let Some(matches) = result["matches"].as_array() {
        // Grype's JSON report.
        for m in matches.iter().take(MAX_FINDINGS) {
            let v = &m["vulnerability"];
            findings.add(v["id"].as_str().unwrap_or(""), score(&v["severity"]));
        }
        return Ok(findings);
    }
    Err(
        "scanner.result is neither a Trivy report (Results), a Grype report (matches) nor an \
         in-toto list of vulnerabilities"
            .into(),
    )
}

/// A severity given as a word or a number.
fn score(v: &Value) -> Severity {
    match v {
        Value::String(s) => Severity::parse(s),
        Value::Number(n) => n.as_f64().map_or(Severity::Unknown, Severity::of_score),
        _ => Severity::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slsa_v1_names_its_builder_and_sources() {
        let p = json!({
            "buildDefinition": {
                "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                "externalParameters": {"workflow": {"repository": "https://github.com/acme/shop", "ref": "refs/heads/main"}},
                "resolvedDependencies": [{"uri": "git+https://github.com/acme/shop@refs/heads/main"}]
            },
            "runDetails": {"builder": {"id": "https://github.com/actions/runner/github-hosted"}}
        });
        let got = provenance(SLSA_PROVENANCE_V1, &p);
        assert_eq!(
            got,
            Ok(Provenance {
                builder_id: Some("https://github.com/actions/runner/github-hosted".into()),
                sources: vec!["https://github.com/acme/shop".into()],
            })
        );
        let v02 = json!({"builder": {"id": "https://tekton.dev/chains/v2"},
            "invocation": {"configSource": {"uri": "git+https://git.example/acme/shop.git@refs/heads/main"}}});
        assert_eq!(
            provenance(SLSA_PROVENANCE_V02, &v02).map(|p| p.sources),
            Ok(vec!["https://git.example/acme/shop".into()])
        );
        assert_eq!(
            provenance(SLSA_PROVENANCE_V1, &json!({"runDetails": 3})),
            Err("runDetails.builder.id is missing".into())
        );
        assert!(provenance("https://example.com/other", &p).is_err());
    }

    #[test]
    fn scans_are_counted_from_trivy_grype_and_in_toto_shapes() {
        let trivy = json!({"scanner": {"uri": "pkg:github/aquasecurity/trivy", "result": {"Results": [
            {"Target": "os", "Vulnerabilities": [
                {"VulnerabilityID": "CVE-1", "Severity": "CRITICAL"},
                {"VulnerabilityID": "CVE-2", "Severity": "HIGH"},
                {"VulnerabilityID": "CVE-3", "Severity": "LOW"}]},
            {"Target": "app"}]}}});
        let f = findings(COSIGN_VULN, &trivy).unwrap_or_default();
        assert_eq!(f.to_string(), "1 critical, 1 high");
        assert_eq!(f.count(Severity::Low), 1);
        assert!(f.critical().contains("CVE-1"));
        let grype = json!({"scanner": {"result": {"matches": [
            {"vulnerability": {"id": "GHSA-x", "severity": "Critical"}},
            {"vulnerability": {"id": "GHSA-y", "severity": "Medium"}}]}}});
        let f = findings(COSIGN_VULN, &grype).unwrap_or_default();
        assert_eq!(f.count(Severity::Critical), 1);
        assert_eq!(f.count(Severity::Medium), 1);
        let in_toto = json!({"scanner": {"result": [
            {"id": "CVE-9", "severity": [{"method": "nvd", "score": "medium"}, {"method": "cvss_score", "score": "9.1"}]},
            {"vulnerability": {"id": "CVE-8", "severity": [{"method": "nvd", "score": "high"}]}}]}});
        let f = findings("https://in-toto.io/attestation/vulns/v0.1", &in_toto).unwrap_or_default();
        assert_eq!(
            f.to_string(),
            "1 critical, 1 high",
            "the worst score counts"
        );
        let empty = json!({"scanner": {"result": []}});
        assert_eq!(findings(COSIGN_VULN, &empty), Ok(Findings::default()));
        let e = findings(COSIGN_VULN, &json!({"scanner": {"result": {"x": 1}}})).unwrap_err();
        assert!(e.starts_with("scanner.result is neither"), "{e}");
        assert!(findings("https://in-toto.io/attestation/vulns/v0.1", &json!({})).is_err());
    }

    #[test]
    fn a_huge_scan_is_read_up_to_the_cap() {
        let many: Vec<_> = (0..MAX_FINDINGS + 5)
            .map(|i| json!({"VulnerabilityID": format!("CVE-{i}"), "Severity": "CRITICAL"}))
            .collect();
        let trivy = json!({"scanner": {"result": {"Results": [{"Vulnerabilities": many}]}}});
        let f = findings(COSIGN_VULN, &trivy).unwrap_or_default();
        assert_eq!(f.count(Severity::Critical) as usize, MAX_FINDINGS);
        assert_eq!(
            f.critical().len(),
            freshen_core::verify::MAX_CRITICAL_IDS,
            "ids kept are bounded"
        );
    }
}
