//! Where a webhook may be delivered: never, by default, to this host, its private networks, or
//! the cloud metadata service (server-side request forgery).
//!
//! The check runs on the addresses a name *resolves to*, at the moment of sending: the
//! [`DeliveryClient`]'s DNS resolver drops forbidden addresses (so a name that resolves to
//! `127.0.0.1` is refused, and a name re-pointed after it was checked cannot slip through),
//! URLs with a literal IP are checked before connecting, and redirects are not followed.
//! An explicit allow-list admits networks on purpose (tests and on-premises receivers).
//!
//! ```
//! use onephase_webhook::destination::AddressPolicy;
//!
//! let strict = AddressPolicy::default();
//! assert!(!strict.permits("169.254.169.254".parse()?));
//! assert!(strict.permits("93.184.215.14".parse()?));
//! let local = AddressPolicy::default().allow("127.0.0.0/8")?;
//! assert!(local.permits("127.0.0.1".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Reads `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Self, DestinationError> {
        let bad = || DestinationError::InvalidNetwork(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                p.parse::<u8>().map_err(|_| bad())?,
            ),
            None => {
                let a = text.parse::<IpAddr>().map_err(|_| bad())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside.
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

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is checked as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses no webhook goes to unless allowed: loopback, private, shared (CGNAT), link-local
/// (which holds the metadata service, 169.254.169.254), unique-local, unspecified, broadcast,
/// multicast, and the documentation and benchmarking ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local, includes fd00:ec2::254
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe) // NAT64 metadata
        }
    }
}

/// Which destinations are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<Network>,
}

impl AddressPolicy {
    /// Also allow `network` (CIDR or a single address), on purpose.
    pub fn allow(mut self, network: &str) -> Result<Self, DestinationError> {
        self.allowed.push(Network::parse(network)?);
        Ok(self)
    }

    /// Whether a webhook may go to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }

    /// Checks `url` now: its literal address, or every address its name resolves to (one
    /// permitted address is enough; a connection later uses only permitted ones).
    pub async fn check(&self, url: &str) -> Result<(), DestinationError> {
        let parsed = parse_url(url)?;
        let host = host_of(&parsed, url)?;
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| DestinationError::Unresolvable {
                    host: host.clone(),
                    message: e.to_string(),
                })?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.iter().any(|ip| self.permits(*ip)) {
            Ok(())
        } else {
            Err(forbidden(&host, &addrs))
        }
    }
}

/// A destination was refused, or a policy could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The URL's address (or every address its name resolves to) is internal.
    #[error(
        "refusing to deliver to {host}: {addresses} is a loopback, private, link-local or metadata address; allow the network explicitly if this is intended"
    )]
    Forbidden {
        /// The host as written.
        host: String,
        /// The address(es) refused.
        addresses: String,
    },
    /// Not an http(s) URL with a host.
    #[error("{0:?} is not an http:// or https:// URL with a host")]
    InvalidUrl(String),
    /// The name does not resolve.
    #[error("{host} does not resolve: {message}")]
    Unresolvable {
        /// The host.
        host: String,
        /// Why.
        message: String,
    },
    /// An allow-list entry is not a network.
    #[error("{0:?} is not a network: write it as 10.0.0.0/8, 127.0.0.1 or fd00::/8")]
    InvalidNetwork(String),
}

impl onephase_core::Classify for DestinationError {
    fn kind(&self) -> onephase_core::ErrorKind {
        match self {
            DestinationError::Unresolvable { .. } => onephase_core::ErrorKind::Unavailable,
            _ => onephase_core::ErrorKind::InvalidInput,
        }
    }
}

fn forbidden(host: &str, addrs: &[IpAddr]) -> DestinationError {
    DestinationError::Forbidden {
        host: host.to_owned(),
        addresses: addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Resolves names and keeps only the addresses the policy permits.
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let ips: Vec<IpAddr> = all.iter().map(SocketAddr::ip).collect();
                return Err(
                    Box::new(forbidden(&host, &ips)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client that only reaches permitted destinations.
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl AddressPolicy {
    /// A client builder whose connections reach only addresses this policy permits (names
    /// are checked as they resolve) and that follows no redirects. A URL with a literal
    /// address is not resolved: check it with [`check`](Self::check) first, as
    /// [`DeliveryClient::send`] does.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: Arc::new(self.clone()),
            }))
    }
}

impl DeliveryClient {
    /// A client under `policy`, with a per-request `timeout` and no redirects.
    pub fn new(policy: AddressPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = policy.client_builder().timeout(timeout).build()?;
        Ok(Self {
            client,
            policy: Arc::new(policy),
        })
    }

    /// The underlying client, for building requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks `url` now: its literal address, or every address its name resolves to. Call it
    /// when an endpoint is created, to refuse it early; [`send`](Self::send) checks again.
    pub async fn check(&self, url: &str) -> Result<(), DestinationError> {
        self.policy.check(url).await
    }

    /// Sends `request` if its destination is permitted. A literal IP is checked here; a name
    /// is checked by the resolver as the connection is made.
    pub async fn send(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, DeliveryError> {
        let url = request.url().as_str().to_owned();
        let parsed = parse_url(&url)?;
        let host = host_of(&parsed, &url)?;
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(forbidden(&host, &[ip]).into());
        }
        self.client
            .execute(request)
            .await
            .map_err(|e| match find_forbidden(&e) {
                Some(refused) => DeliveryError::Destination(refused),
                None => DeliveryError::Http(e),
            })
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, DestinationError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| DestinationError::InvalidUrl(url.to_owned()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DestinationError::InvalidUrl(url.to_owned()));
    }
    Ok(parsed)
}

fn host_of(url: &reqwest::Url, raw: &str) -> Result<String, DestinationError> {
    match url.host_str() {
        // IPv6 literals come bracketed.
        Some(h) if !h.is_empty() => Ok(h.trim_start_matches('[').trim_end_matches(']').to_owned()),
        _ => Err(DestinationError::InvalidUrl(raw.to_owned())),
    }
}

fn find_forbidden(e: &(dyn std::error::Error + 'static)) -> Option<DestinationError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<DestinationError>() {
            return Some(refused.clone());
        }
        current = err.source();
    }
    None
}

/// A delivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The destination is not allowed; nothing was sent.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The request failed (connection, timeout, ...).
    #[error("{0}")]
    Http(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn internal_ranges_are_recognised_in_every_spelling() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
            "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert!(is_internal(ip), "{ip} must be internal");
        }
        for ip in ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert!(!is_internal(ip), "{ip} is public");
        }
    }

    #[test]
    fn allow_lists_admit_exactly_their_networks() {
        let policy = AddressPolicy::default()
            .allow("127.0.0.0/8")
            .expect("valid")
            .allow("fd00::/8")
            .expect("valid");
        assert!(policy.permits(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))));
        assert!(policy.permits("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(policy.permits("fd12::1".parse().expect("ip")));
        assert!(!policy.permits("10.0.0.1".parse().expect("ip")));
        assert!(AddressPolicy::default().allow("10.0.0.0/33").is_err());
        assert!(AddressPolicy::default().allow("not a network").is_err());
    }
}
