//! The outbound HTTP client every action shares, and the address policy it enforces.
//!
//! Flows are written by users and render URLs from event data, so an HTTP action could be aimed at
//! the machine hookflow runs on or its private network (server-side request forgery). By default
//! hookflow refuses every address that is not globally reachable; `allow` lists the networks a
//! deployment trusts (tests allow `127.0.0.1`). The check runs on every address a host name resolves
//! to (in the resolver, so DNS tricks don't bypass it), on IP-literal URLs before sending, and on
//! every redirect.
//!
//! # Invariants
//!
//! - "Public" is decided by the IANA special-purpose address registries as the `http-acl` crate
//!   carries them (the same table as the standard library's unstable `is_global`), never by a
//!   list kept here. IPv6 ranges that embed an IPv4 address (compatible `::/96`, NAT64
//!   `64:ff9b::/96`, 6to4 `2002::/16`, Teredo) are refused whatever they embed; IPv4-mapped
//!   addresses (`::ffff:a.b.c.d`) are checked as the IPv4 address.
//! - hookflow's own listen address is reachable only under the request inspector's path
//!   ([`INSPECTOR_PATH`]): a flow can post to `/inspect/…`, never read the API.
//! - No proxy is used unless [`OutboundPolicy::proxy`] names one: a proxy from the environment
//!   (`HTTP_PROXY`) would resolve names the guard never sees.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_acl::{AclClassification, HttpAcl};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr.trim())
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self {
            addr: canonical(addr),
            prefix,
        })
    }
}

/// The path prefix of the request inspector, the one part of hookflow's own server that flows may
/// reach.
pub const INSPECTOR_PATH: &str = "/inspect/";

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Networks allowed even though they are not public.
    pub allow: Vec<Network>,
    /// hookflow's own listen address: URLs naming it literally under [`INSPECTOR_PATH`]
    /// (`http://127.0.0.1:8080/inspect/…`) are allowed, so flows can post to the request inspector.
    pub own_address: Option<SocketAddr>,
    /// The proxy every request goes through (`http://host:port`); `None`: no proxy, whatever the
    /// environment says.
    pub proxy: Option<String>,
}

impl OutboundPolicy {
    /// Whether `ip:port` is hookflow's own listen address.
    fn is_own(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let Some(own) = self.own_address else {
            return false;
        };
        let ip = canonical(ip);
        port == Some(own.port())
            && (ip == own.ip() || (own.ip().is_unspecified() && ip.is_loopback()))
    }

    /// Why `ip` may not be reached, or `None` if it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if is_public(ip) || self.allow.iter().any(|n| n.contains(ip)) {
            return None;
        }
        Some(format!(
            "refused to connect to {ip}: it is not a public address (loopback, private, \
             link-local or another special-purpose range; allow it in the configuration's \
             `outbound.allow` list if this is intended)"
        ))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) to IPv4, so that `allow` entries and the
/// checks treat them alike.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether the IANA special-purpose registries call `ip` globally reachable, as `http-acl`
/// carries them (IPv6 ranges that embed an IPv4 address are refused as a whole). Besides: an IPv6
/// address must be in `2000::/3`, the only block IANA's IPv6 address space registry allocates
/// as global unicast (the rest, such as the deprecated site-local `fec0::/10`, is reserved), and
/// multicast is never a place to send an HTTP request.
fn is_public(ip: IpAddr) -> bool {
    static ACL: OnceLock<HttpAcl> = OnceLock::new();
    let acl = ACL.get_or_init(|| HttpAcl::builder().ip_acl_default(true).build());
    let allocated = match ip {
        IpAddr::V4(v4) => !v4.is_multicast(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xe000 == 0x2000,
    };
    allocated && acl.is_ip_allowed(&ip) != AclClassification::DeniedNotGlobal
}

/// The policy as enforced: every refusal is logged and counted.
#[derive(Debug)]
struct Guard {
    policy: OutboundPolicy,
    refused: AtomicU64,
}

impl Guard {
    /// [`OutboundPolicy::refusal`], logged and counted.
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        self.counted(self.policy.refusal(ip))
    }

    /// [`OutboundPolicy::url_refusal`], logged and counted.
    fn url_refusal(&self, url: &reqwest::Url) -> Option<String> {
        self.counted(self.policy.url_refusal(url))
    }

    fn counted(&self, refusal: Option<String>) -> Option<String> {
        if let Some(why) = &refusal {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %why, "refused an outbound request");
        }
        refusal
    }
}

/// The HTTP client actions use: a shared `reqwest::Client` plus the policy it enforces.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    guard: Arc<Guard>,
}

impl HttpClient {
    /// A client enforcing `policy`, following at most 5 redirects. Fails when the policy's proxy
    /// is not a URL.
    pub fn new(policy: OutboundPolicy) -> Result<Self, reqwest::Error> {
        let guard = Arc::new(Guard {
            policy,
            refused: AtomicU64::new(0),
        });
        let policy = &guard.policy;
        let redirect_guard = guard.clone();
        // Through a proxy, the only connection hookflow opens is to the proxy (which the
        // configuration names, so it is trusted); host names are the proxy's to resolve.
        let builder = match &policy.proxy {
            Some(proxy) => reqwest::Client::builder().proxy(reqwest::Proxy::all(proxy)?),
            None => reqwest::Client::builder()
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver {
                    guard: guard.clone(),
                })),
        };
        let client = builder
            .user_agent(concat!("hookflow/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("too many redirects (more than 5)");
                }
                match redirect_guard.url_refusal(attempt.url()) {
                    Some(why) => attempt.error(why),
                    None => attempt.follow(),
                }
            }))
            .build()?;
        Ok(Self { client, guard })
    }

    /// How many requests, redirects and resolved addresses the policy refused since start.
    pub fn refused(&self) -> u64 {
        self.guard.refused.load(Ordering::Relaxed)
    }

    /// The underlying client, for building requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks a URL before sending: its scheme, and its host if it is an IP literal (host names are
    /// checked by the resolver on connect).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        match self.guard.url_refusal(url) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

impl OutboundPolicy {
    /// Why a URL with an IP-literal host may not be reached (host names are checked on resolution).
    /// hookflow's own address passes only for the request inspector's path.
    fn url_refusal(&self, url: &reqwest::Url) -> Option<String> {
        let ip = literal_ip(url)?;
        if self.is_own(ip, url.port_or_known_default()) && url.path().starts_with(INSPECTOR_PATH) {
            return None;
        }
        self.refusal(ip)
    }
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        url::Host::Domain(_) => None,
    }
}

/// Resolves host names with the system resolver and drops refused addresses; fails when none is left.
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match guard.refusal(a.ip()) {
                    Some(why) => {
                        refusals.push(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refusals
                    .pop()
                    .unwrap_or_else(|| format!("`{host}` did not resolve"));
                return Err(format!("{host}: {why}").into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_non_public_addresses_unless_allowed() {
        let policy = OutboundPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "224.0.0.1",
            "fec0::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "::7f00:1",
            "::a00:1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:db8::1",
            "100::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(policy.refusal(ip(refused)).is_some(), "{refused} allowed");
        }
        for allowed in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(policy.refusal(ip(allowed)).is_none(), "{allowed} refused");
        }
        let policy = OutboundPolicy {
            allow: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..OutboundPolicy::default()
        };
        assert!(policy.refusal(ip("127.0.0.1")).is_none());
        assert!(policy.refusal(ip("10.200.0.1")).is_none());
        assert!(policy.refusal(ip("127.0.0.2")).is_some());
    }

    #[test]
    fn parses_networks() {
        assert!("10.0.0.0/8".parse::<Network>().is_ok());
        assert!("::1/128".parse::<Network>().is_ok());
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
        assert!("0.0.0.0/0"
            .parse::<Network>()
            .unwrap()
            .contains(ip("1.2.3.4")));
    }

    #[test]
    fn checks_literal_urls() {
        let client = HttpClient::new(OutboundPolicy::default()).unwrap();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(client.check_url(&url("http://127.0.0.1:9/x")).is_err());
        assert!(client.check_url(&url("http://localhost:9/x")).is_err());
        assert!(client.check_url(&url("ftp://example.com/x")).is_err());
        assert!(client.check_url(&url("https://example.com/x")).is_ok());
        let own = OutboundPolicy {
            own_address: Some("127.0.0.1:8080".parse().unwrap()),
            ..OutboundPolicy::default()
        };
        let client = HttpClient::new(own).unwrap();
        assert!(client
            .check_url(&url("http://127.0.0.1:8080/inspect/x"))
            .is_ok());
        for refused in [
            "http://127.0.0.1:8081/inspect/x",
            "http://127.0.0.1:8080/api/v1/flows",
            "http://127.0.0.1:8080/inspect/../api/v1/flows",
            "http://127.0.0.1:8080/inspect/%2e%2e/api/v1/flows",
            "http://127.0.0.1:8080/inspectx",
        ] {
            assert!(
                client.check_url(&url(refused)).is_err(),
                "{refused} allowed"
            );
        }
        assert_eq!(client.refused(), 5);
    }
}
