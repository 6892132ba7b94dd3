//! A namespaced policy's PromQL reads only its own namespace's series.
//!
//! A `RefreshPolicy` is written by a tenant; its canary query runs with the
//! operator's Prometheus access, which sees every tenant. So every series
//! selector in it must carry the matcher `namespace="<its namespace>"`
//! (in each `or` alternative). A ClusterRefreshPolicy's query is the
//! platform team's and may read anything.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, VectorSelector};

/// How deeply a query may nest; deeper queries are refused rather than
/// walked (the parser bounds the length at 4096 characters).
const MAX_DEPTH: usize = 64;

/// Whether every series selector of `query` is confined to `namespace`;
/// otherwise what is wrong, in words a policy author can act on.
pub fn confined_to(query: &str, namespace: &str) -> Result<(), String> {
    // promql-parser panics on a duration past what `Duration` holds (found
    // by `make fuzz`): such durations are refused before parsing, and any
    // other panic of the parser is a refusal too, never the operator's end.
    durations_fit(query)?;
    let parsed = std::panic::catch_unwind(|| parser::parse(query))
        .map_err(|_| "is not PromQL: the parser could not read it")?;
    let expr = parsed.map_err(|e| format!("is not PromQL: {e}"))?;
    walk(&expr, namespace, 0)
}

/// Digits a duration's number may have: 999,999,999 years still fit in a
/// `Duration`; a few more do not.
const MAX_DURATION_DIGITS: usize = 9;

/// Refuses a number of more than [`MAX_DURATION_DIGITS`] digits where a
/// duration may be: inside `[...]` (ranges, subqueries), or followed by a
/// unit (an `offset`). Quoted strings are skipped.
fn durations_fit(query: &str) -> Result<(), String> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0usize;
    let mut run = 0usize;
    let chars: Vec<char> = query.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' if q != '`' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        if c.is_ascii_digit() {
            run += 1;
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            let unit = matches!(next, 's' | 'm' | 'h' | 'd' | 'w' | 'y');
            if run > MAX_DURATION_DIGITS && (depth > 0 || unit) && !next.is_ascii_digit() {
                return Err(format!(
                    "is not PromQL freshen accepts: a duration of more than \
                     {MAX_DURATION_DIGITS} digits"
                ));
            }
            continue;
        }
        run = 0;
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn walk(expr: &Expr, namespace: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nests deeper than {MAX_DEPTH} levels"));
    }
    let next = |e: &Expr| walk(e, namespace, depth + 1);
    match expr {
        Expr::VectorSelector(vs) => selector(vs, namespace),
        Expr::MatrixSelector(ms) => selector(&ms.vs, namespace),
        Expr::Aggregate(a) => {
            next(&a.expr)?;
            a.param.as_deref().map_or(Ok(()), next)
        }
        Expr::Unary(u) => next(&u.expr),
        Expr::Binary(b) => {
            next(&b.lhs)?;
            next(&b.rhs)
        }
        Expr::Paren(p) => next(&p.expr),
        Expr::Subquery(s) => next(&s.expr),
        Expr::Call(c) => c.args.args.iter().try_for_each(|a| next(a)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Extension(_) => Err("uses an extension expression".into()),
    }
}

fn selector(vs: &VectorSelector, namespace: &str) -> Result<(), String> {
    let confines = |ms: &[Matcher]| {
        ms.iter().any(|m| {
            matches!(m.op, MatchOp::Equal) && m.name == "namespace" && m.value == namespace
        })
    };
    let ok = if vs.matchers.or_matchers.is_empty() {
        confines(&vs.matchers.matchers)
    } else {
        vs.matchers.or_matchers.iter().all(|alt| confines(alt))
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "selector `{vs}` reads other namespaces' series: in a RefreshPolicy every selector \
             must carry namespace=\"{namespace}\" (a ClusterRefreshPolicy may query freely)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `make fuzz` (target `promql`): promql-parser panicked
    /// converting this subquery's range to a `Duration`.
    #[test]
    fn a_duration_the_parser_cannot_hold_is_refused_not_a_panic() {
        for query in [
            r#"sum(rame{nace="p"}[444444444444444444444444444441:0])"#,
            r#"sum(rate(a{namespace="shop"}[666666666666666666666666:66666666666666666666666666660m]))"#,
            r#"a{namespace="shop"} offset 99999999999999999999y"#,
        ] {
            let refused = confined_to(query, "shop");
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.starts_with("is not PromQL")),
                "{query}: {refused:?}"
            );
        }
        // Long numbers elsewhere are fine: in strings, and as thresholds.
        assert_eq!(
            confined_to(
                r#"sum(rate(a{namespace="shop",id="123456789012345s"}[5m])) > 0.000000000001"#,
                "shop"
            ),
            Ok(())
        );
    }

    #[test]
    fn every_selector_must_name_the_namespace() {
        for ok in [
            "vector(1)",
            r#"sum(rate(http_requests_total{namespace="shop",code=~"5.."}[1m]))"#,
            r#"rate(a{namespace="shop"}[5m]) / rate(b{namespace="shop"}[5m])"#,
            r#"max_over_time(up{namespace="shop"}[10m:1m])"#,
            r#"{__name__="up", namespace="shop"}"#,
        ] {
            assert_eq!(confined_to(ok, "shop"), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("up", "`up`"),
            (r#"up{namespace="other"}"#, "namespace=\"shop\""),
            (r#"up{namespace=~"shop|other"}"#, "reads other namespaces"),
            (r#"up{namespace!="x"}"#, "reads other namespaces"),
            (r#"rate(a{namespace="shop"}[5m]) / rate(b[5m])"#, "`b`"),
            (r#"sum by (namespace) (kube_pod_info)"#, "kube_pod_info"),
            (
                r#"up{namespace="shop" or job="x"}"#,
                "reads other namespaces",
            ),
            ("sum(", "is not PromQL"),
        ] {
            let e = confined_to(bad, "shop");
            assert!(e.as_ref().is_err_and(|e| e.contains(why)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_walked() {
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        let e = confined_to(&deep, "shop");
        assert!(e.is_err(), "{e:?}");
    }
}
