//! The outbound HTTP client every action shares, and the address policy it enforces.
//!
//! Flows are written by users and render URLs from event data, so an HTTP action could be aimed at
//! the machine hookflow runs on or its private network (server-side request forgery). By default
//! hookflow refuses loopback, private, link-local and other non-public addresses; `allow` lists the
//! networks a deployment trusts (tests allow `127.0.0.1`). The check runs on every address a host
//! name resolves to (in the resolver, so DNS tricks don't bypass it), on IP-literal URLs before
//! sending, and on every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Networks allowed even though they are not public.
    pub allow: Vec<Network>,
    /// hookflow's own listen address: URLs naming it literally (`http://127.0.0.1:8080/inspect/…`)
    /// are allowed, so flows can post to the built-in request inspector.
    pub own_address: Option<SocketAddr>,
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
            "refused to connect to {ip}: it is a loopback, private or link-local address \
             (allow it in the configuration's `outbound.allow` list if this is intended)"
        ))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) to IPv4 so they get the same checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || first & 0xfe00 == 0xfc00 // unique local
        || first & 0xffc0 == 0xfe80) // link-local
}

/// The HTTP client actions use: a shared `reqwest::Client` plus the policy it enforces.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl HttpClient {
    /// A client enforcing `policy`, following at most 5 redirects.
    pub fn new(policy: OutboundPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let redirect_policy = policy.clone();
        let client = reqwest::Client::builder()
            .user_agent(concat!("hookflow/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("too many redirects (more than 5)");
                }
                match redirect_policy.url_refusal(attempt.url()) {
                    Some(why) => attempt.error(why),
                    None => attempt.follow(),
                }
            }))
            .build()?;
        Ok(Self { client, policy })
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
        match self.policy.url_refusal(url) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

impl OutboundPolicy {
    /// Why a URL with an IP-literal host may not be reached (host names are checked on resolution).
    fn url_refusal(&self, url: &reqwest::Url) -> Option<String> {
        let ip = literal_ip(url)?;
        if self.is_own(ip, url.port_or_known_default()) {
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
    policy: Arc<OutboundPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
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
        ] {
            assert!(policy.refusal(ip(refused)).is_some(), "{refused} allowed");
        }
        for allowed in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(policy.refusal(ip(allowed)).is_none(), "{allowed} refused");
        }
        let policy = OutboundPolicy {
            allow: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            own_address: None,
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
            allow: vec![],
            own_address: Some("127.0.0.1:8080".parse().unwrap()),
        };
        let client = HttpClient::new(own).unwrap();
        assert!(client
            .check_url(&url("http://127.0.0.1:8080/inspect/x"))
            .is_ok());
        assert!(client
            .check_url(&url("http://127.0.0.1:8081/inspect/x"))
            .is_err());
    }
}
