//! Which registry hosts freshen may reach.
//!
//! An image reference, a `freshen.dev/base-image` annotation or an image's
//! base-name label is tenant input, and each names a host freshen will send
//! requests to from inside the cluster. Left alone, that reaches cloud
//! metadata (`169.254.169.254`), the API server, kubelets or any internal
//! service. So, for each host, in order:
//!
//! 1. a host or address matching `--registry-allow` is reached;
//! 2. one matching `--registry-deny` is refused (by name, and by every
//!    address it resolves to, so DNS cannot smuggle a denied address in);
//! 3. one resolving to a loopback, link-local or unspecified address is
//!    refused (it is never a registry a workload pulls from through the
//!    node's runtime, and it is where metadata services live);
//! 4. anything else is reached.
//!
//! `--registry-deny '*'` with `--registry-allow` entries admits only those.
//!
//! Hosts are read as the URL parser reads them ([`parse_host`]: the
//! WHATWG forms of IPv4 literals, lower-cased names without a trailing
//! dot), names are resolved once by the HTTP clients' own [`Resolver`],
//! every address judged and only those connected to; anything that cannot
//! be judged is refused.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One `--registry-allow` / `--registry-deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// A host name or address literal, e.g. `registry.example.com`.
    Exact(String),
    /// `*.example.com`: any host below that domain.
    Suffix(String),
    /// An address range, e.g. `10.0.0.0/8` or `fd00::/8`.
    Net(IpAddr, u8),
}

/// The form every pattern error names.
pub const PATTERN_FORM: &str = "a host (registry.example.com), a domain wildcard (*.example.com), an address \
     (10.1.2.3), a range (10.0.0.0/8, fd00::/8) or *";

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let bad =
            |why: &str| format!("{s:?} is not a host pattern ({why}); expected {PATTERN_FORM}");
        if s == "*" {
            return Ok(Self::Any);
        }
        if let Some((addr, bits)) = s.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad("not an address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| bad("prefix length out of range"))?;
            return Ok(Self::Net(addr, bits));
        }
        let host = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(addr) = host.parse::<IpAddr>() {
            return Ok(Self::Net(addr, if addr.is_ipv4() { 32 } else { 128 }));
        }
        let valid = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if let Some(domain) = s.strip_prefix("*.") {
            return valid(domain)
                .then(|| Self::Suffix(domain.to_owned()))
                .ok_or_else(|| bad("not a domain"));
        }
        valid(&s)
            .then(|| Self::Exact(s.clone()))
            .ok_or_else(|| bad("not a host name"))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(d) => write!(f, "*.{d}"),
            Self::Net(a, bits) => write!(f, "{a}/{bits}"),
        }
    }
}

impl HostPattern {
    fn matches_name(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(h) => h == host,
            Self::Suffix(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('.')),
            Self::Net(..) => host.parse::<IpAddr>().is_ok_and(|a| self.matches_addr(a)),
        }
    }

    fn matches_addr(&self, addr: IpAddr) -> bool {
        match *self {
            Self::Any => true,
            Self::Net(net, bits) => in_net(canonical(addr), canonical(net), bits),
            Self::Exact(_) | Self::Suffix(_) => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) judged as the IPv4
/// address they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Why an address is refused by default, if it is.
fn refused_by_default(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address (cloud metadata)"),
        IpAddr::V4(a) if a.is_unspecified() || a.octets()[0] == 0 => Some("an unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("an unspecified address"),
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("a link-local address (cloud metadata)")
        }
        _ => None,
    }
}

/// The allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Reached whatever else says (`--registry-allow`).
    pub allow: Vec<HostPattern>,
    /// Refused (`--registry-deny`).
    pub deny: Vec<HostPattern>,
}

/// What the name alone decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByName {
    /// Listed in `--registry-allow`: reach it without looking further.
    Allowed,
    /// Refused, and why.
    Refused(String),
    /// Resolve it and judge its addresses ([`Reach::judge_addresses`]).
    Resolve,
}

impl Reach {
    /// Judges a registry host (no port) by its name.
    pub fn judge_name(&self, host: &str) -> ByName {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if self.allow.iter().any(|p| p.matches_name(&host)) {
            return ByName::Allowed;
        }
        if let Some(p) = self.deny.iter().find(|p| p.matches_name(&host)) {
            return ByName::Refused(format!("{host} matches --registry-deny {p}"));
        }
        ByName::Resolve
    }

    /// Judges the addresses a host not allowed by name resolves to: every
    /// one must pass.
    pub fn judge_addresses(&self, host: &str, addresses: &[IpAddr]) -> Result<(), String> {
        for &addr in addresses {
            if self.allow.iter().any(|p| p.matches_addr(addr)) {
                continue;
            }
            if let Some(p) = self.deny.iter().find(|p| p.matches_addr(addr)) {
                return Err(format!(
                    "{host} resolves to {addr}, which matches --registry-deny {p}"
                ));
            }
            if let Some(why) = refused_by_default(addr) {
                return Err(format!(
                    "{host} resolves to {addr}, {why}; list it with --registry-allow to reach it"
                ));
            }
        }
        Ok(())
    }
}

/// A host as the URL parser reads it, which is what the HTTP client
/// connects to: `0x7f.0x.0x.0x1`, `2130706433` and `127.1` are all the
/// address 127.0.0.1, and a name is lower-cased, IDNA-mapped and loses a
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A domain name.
    Name(String),
    /// An address literal.
    Addr(IpAddr),
}

/// Reads `host` (no port; an IPv6 literal with or without brackets) as the
/// URL parser does; a host it cannot read is refused.
pub fn parse_host(host: &str) -> Result<Host, String> {
    let bracketed = match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]"),
        false => host.to_owned(),
    };
    match url::Host::parse(&bracketed) {
        Ok(url::Host::Domain(name)) => Ok(Host::Name(name.trim_end_matches('.').to_owned())),
        Ok(url::Host::Ipv4(a)) => Ok(Host::Addr(IpAddr::V4(a))),
        Ok(url::Host::Ipv6(a)) => Ok(Host::Addr(IpAddr::V6(a))),
        Err(e) => Err(format!(
            "{:?} is not a host name or address: {e}",
            host.chars().take(256).collect::<String>()
        )),
    }
}

impl Reach {
    /// Judges a host without resolving it: an address literal by its
    /// address, a name by the lists; a name that may be reached still has
    /// every address it resolves to judged ([`resolve`]) before any
    /// connection is made to it.
    pub fn judge_host(&self, host: &Host) -> Result<(), String> {
        match host {
            Host::Addr(addr) => match self.judge_name(&addr.to_string()) {
                ByName::Allowed => Ok(()),
                ByName::Refused(why) => Err(why),
                ByName::Resolve => self.judge_addresses(&addr.to_string(), &[*addr]),
            },
            Host::Name(name) => match self.judge_name(name) {
                ByName::Refused(why) => Err(why),
                ByName::Allowed | ByName::Resolve => Ok(()),
            },
        }
    }
}

/// How long the check waits for a name to resolve.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The addresses freshen may connect to for the name `name` (canonical, see
/// [`parse_host`]): every address it resolves to, each judged. Fails
/// closed: a refused name, a name that does not resolve or whose DNS does
/// not answer within [`RESOLVE_TIMEOUT`], a single-label name (resolved
/// through the pod's DNS search path, so not the name judged) unless it is
/// allowed by name, or any refused address. A name not allowed by name is
/// resolved as an absolute name (with a trailing dot), so the search path
/// cannot make it another host than the one judged.
pub async fn resolve(reach: &Reach, name: &str) -> Result<Vec<IpAddr>, String> {
    let lookup = match reach.judge_name(name) {
        ByName::Refused(why) => return Err(why),
        ByName::Allowed => name.to_owned(),
        ByName::Resolve if !name.contains('.') => {
            return Err(format!(
                "{name} is a single-label name, resolved through the DNS search path; name the \
                 host fully (with its domain) or list it with --registry-allow"
            ));
        }
        ByName::Resolve => format!("{name}."),
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((lookup, 0))).await;
    let addresses: Vec<IpAddr> = match found {
        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
        Ok(Err(e)) => return Err(format!("{name} does not resolve: {e}")),
        // A tenant can name a host whose DNS never answers: the check
        // must not hold a reconcile, nor let an unchecked name through.
        Err(_) => {
            return Err(format!(
                "{name}'s addresses could not be checked: no DNS answer within {}s",
                RESOLVE_TIMEOUT.as_secs()
            ));
        }
    };
    if addresses.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    if reach.judge_name(name) != ByName::Allowed {
        reach.judge_addresses(name, &addresses)?;
    }
    Ok(addresses)
}

/// Judges a host (no port) by its name, then by every address it resolves
/// to, failing closed (see [`resolve`]). A check before a request, for a
/// clear error; the connection itself goes only to addresses the
/// [`Resolver`] judged again, so DNS answering differently the second time
/// (rebinding) gains nothing.
pub async fn check(reach: &Reach, host: &str) -> Result<(), String> {
    let host = parse_host(host)?;
    reach.judge_host(&host)?;
    match host {
        Host::Addr(_) => Ok(()),
        Host::Name(name) => resolve(reach, &name).await.map(drop),
    }
}

/// The HTTP clients' resolver: every name they connect to is resolved here
/// and judged ([`resolve`]), and only the judged addresses are connected
/// to. Address literals never reach a resolver; [`check`] and the redirect
/// policy judge those.
#[derive(Debug, Clone)]
pub struct Resolver {
    reach: Reach,
}

impl Resolver {
    /// A resolver judging by `reach`.
    pub fn new(reach: Reach) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { reach })
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.reach.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let canonical = match parse_host(&name)? {
                Host::Name(n) => n,
                Host::Addr(a) => return Ok(one(a)),
            };
            let addresses = resolve(&reach, &canonical).await.map_err(|why| {
                Box::new(std::io::Error::other(format!("refused: {why}")))
                    as Box<dyn std::error::Error + Send + Sync>
            })?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|ip| std::net::SocketAddr::new(ip, 0)),
            );
            Ok(addrs)
        })
    }
}

fn one(addr: IpAddr) -> reqwest::dns::Addrs {
    Box::new(std::iter::once(std::net::SocketAddr::new(addr, 0)))
}

/// Judges the host a redirect goes to, as the URL parser read it: an
/// address by its address, a name by the lists (its addresses are judged
/// by the [`Resolver`] when it is connected to).
pub fn judge_redirect(reach: &Reach, host: Option<url::Host<&str>>) -> Result<(), String> {
    let host = match host {
        Some(url::Host::Domain(name)) => Host::Name(name.trim_end_matches('.').to_owned()),
        Some(url::Host::Ipv4(a)) => Host::Addr(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Host::Addr(IpAddr::V6(a)),
        None => return Err("the redirect names no host".into()),
    };
    reach.judge_host(&host)
}

/// The host of a `host[:port]` registry, without the port (IPv6 literals
/// keep no brackets).
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(allow: &[&str], deny: &[&str]) -> Reach {
        let parse = |l: &[&str]| l.iter().map(|p| p.parse()).collect::<Result<Vec<_>, _>>();
        match (parse(allow), parse(deny)) {
            (Ok(allow), Ok(deny)) => Reach { allow, deny },
            (a, d) => panic!("{a:?} {d:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn metadata_and_loopback_are_refused_unless_listed() {
        let r = Reach::default();
        for addr in [
            "169.254.169.254",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            let e = r.judge_addresses("evil.example", &[ip(addr)]);
            assert!(e.is_err(), "{addr}");
        }
        let e = r.judge_addresses("meta.example", &[ip("169.254.169.254")]);
        assert!(e.is_err_and(|e| e.contains("cloud metadata") && e.contains("--registry-allow")));
        assert_eq!(
            r.judge_addresses("ok.example", &[ip("93.184.216.34")]),
            Ok(())
        );
        // One bad address among good ones is enough to refuse.
        assert!(
            r.judge_addresses("mixed.example", &[ip("93.184.216.34"), ip("127.0.0.1")])
                .is_err()
        );
        let harness = reach(&["127.0.0.1"], &[]);
        assert_eq!(harness.judge_name("127.0.0.1"), ByName::Allowed);
        assert_eq!(
            harness.judge_addresses("localhost", &[ip("127.0.0.1")]),
            Ok(())
        );
    }

    #[test]
    fn deny_lists_match_names_and_resolved_addresses() {
        let r = reach(&[], &["10.0.0.0/8", "*.internal", "kubernetes.default.svc"]);
        assert!(matches!(
            r.judge_name("kubernetes.default.svc"),
            ByName::Refused(_)
        ));
        assert!(matches!(
            r.judge_name("registry.internal"),
            ByName::Refused(_)
        ));
        assert_eq!(
            r.judge_name("internal"),
            ByName::Resolve,
            "the suffix needs a dot"
        );
        assert!(matches!(r.judge_name("10.1.2.3"), ByName::Refused(_)));
        // A public name that resolves into a denied range (DNS smuggling).
        let e = r.judge_addresses("sneaky.example", &[ip("10.96.0.1")]);
        assert!(e.is_err_and(|e| e.contains("10.96.0.1") && e.contains("10.0.0.0/8")));
    }

    #[tokio::test]
    async fn every_spelling_of_a_refused_address_is_refused() {
        let r = Reach::default();
        for host in [
            "0x7f.0x.0x.0x1",
            "0x7f000001",
            "2130706433",
            "127.1",
            "0177.0.0.1",
            "127.0.0.1.",
            "[::ffff:7f00:1]",
            "::ffff:127.0.0.1",
            "0",
            "0xa9.0xfe.0xa9.0xfe",
            "[fe80::1]",
        ] {
            let host_read = parse_host(host);
            assert!(
                matches!(host_read, Ok(Host::Addr(_))),
                "{host} reads as {host_read:?}"
            );
            let e = check(&r, host).await;
            assert!(e.is_err(), "{host} passed");
        }
        assert_eq!(
            parse_host("0x7f.0x.0x.0x1"),
            Ok(Host::Addr(ip("127.0.0.1")))
        );
        // A listed address is reached however it is spelled.
        let harness = reach(&["127.0.0.1"], &[]);
        assert_eq!(check(&harness, "0x7f.0x.0x.0x1").await, Ok(()));
    }

    #[tokio::test]
    async fn names_are_judged_as_they_are_resolved_and_fail_closed() {
        let r = reach(&[], &["kubernetes.default.svc", "*.internal"]);
        // Trailing dots and capitals name the same host.
        for host in [
            "kubernetes.default.svc.",
            "KUBERNETES.default.svc",
            "a.Internal.",
        ] {
            let e = check(&r, host).await;
            assert!(
                e.as_ref().is_err_and(|e| e.contains("--registry-deny")),
                "{host}: {e:?}"
            );
        }
        // A short name goes through the search path: not the name judged.
        let e = check(&r, "kubernetes").await;
        assert!(e.is_err_and(|e| e.contains("single-label")));
        // A name that does not resolve is refused, not let through.
        let e = check(&r, "no-such-host.invalid").await;
        assert!(e.is_err_and(|e| e.contains("does not resolve")));
        // The clients' resolver judges the same way.
        let resolver = Resolver::new(r.clone());
        let name = "kubernetes".parse::<reqwest::dns::Name>();
        let resolved = match name {
            Ok(name) => reqwest::dns::Resolve::resolve(resolver.as_ref(), name).await,
            Err(_) => panic!("a name"),
        };
        assert!(resolved.is_err_and(|e| e.to_string().contains("single-label")));
        // A name listed by name is resolved as it is.
        let allowed = reach(&["localhost"], &[]);
        assert!(resolve(&allowed, "localhost").await.is_ok());
    }

    #[test]
    fn redirects_are_judged_on_the_host_the_parser_read() {
        let r = Reach::default();
        let url = |u: &str| url::Url::parse(u).unwrap_or_else(|e| panic!("{e}"));
        let to = url("http://0x7f.0x.0x.0x1:5000/v2/");
        assert!(judge_redirect(&r, to.host()).is_err());
        let to = url("http://[::ffff:169.254.169.254]/");
        assert!(judge_redirect(&r, to.host()).is_err());
        let to = url("https://registry.example.com./v2/");
        assert_eq!(judge_redirect(&r, to.host()), Ok(()));
        let denied = reach(&[], &["registry.example.com"]);
        assert!(judge_redirect(&denied, to.host()).is_err());
    }

    #[test]
    fn deny_all_with_an_allow_list_admits_only_those() {
        let r = reach(&["registry.example.com", "*.corp.example"], &["*"]);
        assert_eq!(r.judge_name("registry.example.com"), ByName::Allowed);
        assert_eq!(r.judge_name("team.corp.example"), ByName::Allowed);
        assert!(matches!(r.judge_name("docker.io"), ByName::Refused(_)));
    }

    #[test]
    fn patterns_parse_strictly_and_hosts_lose_their_port() {
        for bad in ["", "10.0.0.0/33", "*.", "a b", "x/y", "http://x"] {
            let e = bad.parse::<HostPattern>();
            assert!(e.is_err_and(|e| e.contains("expected a host")), "{bad:?}");
        }
        assert_eq!(host_of("127.0.0.1:15000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("docker.io"), "docker.io");
        assert_eq!(
            "[::1]".parse::<HostPattern>(),
            Ok(HostPattern::Net(ip("::1"), 128))
        );
    }
}
