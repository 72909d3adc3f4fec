//! The SSRF-guarded outbound client: every URL a tenant gives Keel to fetch
//! (reconciliation pulls, crawled sites) goes through [`get`] or [`fetch`].
//!
//! Only http(s); the host must resolve to public unicast addresses only
//! (unless private ones are allowed in development; link-local addresses,
//! where clouds serve instance metadata, never are); the connection is pinned
//! to the address that was checked, so a DNS answer cannot change between the
//! check and the connection; every redirect is checked again; the body is
//! bounded in bytes and the whole exchange in time. No proxy is ever used
//! (`HTTP_PROXY` and friends are ignored): a proxy would resolve and connect
//! on its own, past the check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use url::Url;

use super::tls::tls_config;

/// How far one fetch may go.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
    pub max_redirects: usize,
    /// Development only: lets loopback and private hosts be fetched.
    pub allow_private: bool,
}

/// Why a fetch returned no body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or what it led to is not allowed; retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// The host could not be reached or answered an error; it may recover.
    #[error("{0}")]
    Failed(String),
}

fn refused(what: &str, error: impl std::fmt::Display) -> FetchError {
    FetchError::Refused(format!("{what}: {error}"))
}

/// Addresses Keel may fetch from: public unicast only. An IPv6 address that
/// carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by that
/// IPv4 address, since that is where the packets end up.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

/// Addresses refused even when private ones are allowed (development):
/// link-local ones (169.254.0.0/16, fe80::/10), where clouds answer with
/// instance metadata and credentials, and AWS's IPv6 metadata address.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6,
        },
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || a >= 240)
}

/// The IPv4 address an IPv6 one stands for, if it is one of the forms that
/// reach an IPv4 host: `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible,
/// deprecated), `64:ff9b::a.b.c.d` (well-known NAT64 prefix) and
/// `2002:aabb:ccdd::/48` (6to4).
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last()),
        // `::` and `::1` are IPv6's own; they are refused below.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(last()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Global unicast (2000::/3) outside the special-purpose blocks inside it.
fn is_public_v6(v6: Ipv6Addr) -> bool {
    let [first, second, third, ..] = v6.segments();
    (first & 0xe000) == 0x2000
        && !(first == 0x2001 && second == 0x0000 // Teredo: tunnels to any IPv4 address
            || first == 0x2001 && second == 0x0002 && third == 0 // benchmarking
            || first == 0x2001 && (second & 0xffe0) == 0x0020 // ORCHIDv2
            || first == 0x2001 && (second & 0xfff0) == 0x0010 // ORCHID (deprecated)
            || first == 0x2001 && second == 0x0db8 // documentation
            || first == 0x3fff && second < 0x1000) // documentation, 3fff::/20
}

/// A response that passed the guard, whatever its status. The body is read
/// (bounded) only for 2xx answers.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    /// Where the response came from, after redirects.
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// GETs `url` within `limits`, expecting a 2xx answer, and returns its body;
/// `what` names the URL in errors (`pull_url`).
pub async fn fetch(what: &str, url: &str, limits: &FetchLimits) -> Result<Vec<u8>, FetchError> {
    let fetched = get(what, url, &HeaderMap::new(), limits).await?;
    if !fetched.status.is_success() {
        return Err(FetchError::Failed(format!(
            "{} answered HTTP {}",
            fetched.url.host_str().unwrap_or_default(),
            fetched.status.as_u16()
        )));
    }
    Ok(fetched.body)
}

/// GETs `url` with the caller's `headers` (validators, user agent) within
/// `limits`, following checked redirects, and returns any final status.
/// The whole exchange, redirects included, is bounded by `limits.timeout`.
pub async fn get(
    what: &str,
    url: &str,
    headers: &HeaderMap,
    limits: &FetchLimits,
) -> Result<Fetched, FetchError> {
    tokio::time::timeout(limits.timeout, follow(what, url, headers, limits))
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Failed(format!(
                "{what}: no complete answer within {} ms",
                limits.timeout.as_millis()
            )))
        })
}

async fn follow(
    what: &str,
    url: &str,
    headers: &HeaderMap,
    limits: &FetchLimits,
) -> Result<Fetched, FetchError> {
    let mut current = Url::parse(url).map_err(|e| refused(what, e))?;
    for _ in 0..=limits.max_redirects {
        if !matches!(current.scheme(), "http" | "https") {
            return Err(refused(what, "only http and https are allowed"));
        }
        let host = current
            .host_str()
            .ok_or_else(|| refused(what, "no host"))?
            .to_owned();
        let port = current.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|e| FetchError::Failed(format!("cannot resolve {host}: {e}")))?
                .collect();
        let address = *addresses
            .first()
            .ok_or_else(|| FetchError::Failed(format!("{host} has no address")))?;
        if addresses.iter().any(|a| is_link_local_or_metadata(a.ip())) {
            return Err(refused(
                what,
                format!("{host} resolves to a link-local (cloud metadata) address"),
            ));
        }
        if !limits.allow_private && !addresses.iter().all(|a| is_public(a.ip())) {
            return Err(refused(
                what,
                format!("{host} resolves to a private or loopback address"),
            ));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls_config()).clone())
            // A proxy would resolve and connect itself, past the check above.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(limits.timeout)
            .resolve(&host, address)
            .build()
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        let unanswered = |e: reqwest::Error| {
            FetchError::Failed(if e.is_timeout() {
                format!(
                    "{host} gave no complete answer within {} ms",
                    limits.timeout.as_millis()
                )
            } else {
                format!("pulling {host}: {}", e.without_url())
            })
        };
        let mut response = client
            .get(current.clone())
            .headers(headers.clone())
            .send()
            .await
            .map_err(unanswered)?;
        let status = response.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| refused(what, "a redirect without Location"))?;
            current = current.join(location).map_err(|e| refused("redirect", e))?;
            continue;
        }
        let mut body = Vec::new();
        if status.is_success() {
            while let Some(chunk) = response.chunk().await.map_err(unanswered)? {
                if body.len() + chunk.len() > limits.max_bytes {
                    return Err(refused(
                        what,
                        format!("the response is larger than {} bytes", limits.max_bytes),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
        }
        return Ok(Fetched {
            status,
            url: current,
            headers: response.headers().clone(),
            body,
        });
    }
    Err(refused(
        what,
        format!("more than {} redirects", limits.max_redirects),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_may_be_fetched() {
        let cases = [
            ("93.184.216.34", true),
            ("2606:4700::1111", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
            // IPv4 in IPv6 clothing: judged by the IPv4 address inside.
            ("64:ff9b::7f00:1", false),    // NAT64 of 127.0.0.1
            ("64:ff9b::a9fe:a9fe", false), // NAT64 of 169.254.169.254
            ("64:ff9b::5db8:d822", true),  // NAT64 of 93.184.216.34
            ("64:ff9b:1::a00:1", false),   // local-use NAT64: the translator is ours
            ("::127.0.0.1", false),        // IPv4-compatible (deprecated)
            ("::10.0.0.1", false),         // IPv4-compatible (deprecated)
            ("2002:7f00:1::1", false),     // 6to4 of 127.0.0.1
            ("2002:a9fe:a9fe::1", false),  // 6to4 of 169.254.169.254
            ("2002:5db8:d822::1", true),   // 6to4 of 93.184.216.34
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false), // Teredo: hides any IPv4
            ("fec0::1", false),            // site-local (deprecated)
            ("100::1", false),             // discard-only
            ("2001:2::1", false),          // benchmarking
            ("198.18.0.1", false),         // benchmarking
            ("198.19.255.254", false),     // benchmarking
            ("192.88.99.1", false),        // 6to4 relay anycast
            ("198.20.0.1", true),
        ];
        for (ip, public) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_even_where_private_ones_are_allowed() {
        let cases = [
            (
                "169.254.169.254",
                true,
                "AWS, GCP and Azure instance metadata",
            ),
            ("169.254.0.1", true, "IPv4 link-local"),
            ("fd00:ec2::254", true, "AWS's IPv6 instance metadata"),
            ("fe80::1", true, "IPv6 link-local"),
            (
                "::ffff:169.254.169.254",
                true,
                "metadata behind an IPv4-mapped address",
            ),
            ("64:ff9b::a9fe:a9fe", true, "metadata behind NAT64"),
            ("127.0.0.1", false, "loopback: a local site in development"),
            ("10.0.0.5", false, "private: a local site in development"),
            ("fd00::1", false, "unique local, not the metadata address"),
            ("93.184.216.34", false, "public"),
        ];
        for (ip, refused, reason) in cases {
            assert_eq!(
                is_link_local_or_metadata(ip.parse().unwrap()),
                refused,
                "{ip}: {reason}"
            );
        }
    }
}
