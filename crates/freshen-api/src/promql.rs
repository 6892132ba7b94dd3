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
    let expr = parser::parse(query).map_err(|e| format!("is not PromQL: {e}"))?;
    walk(&expr, namespace, 0)
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
