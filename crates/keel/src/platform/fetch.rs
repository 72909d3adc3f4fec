//! The SSRF-guarded outbound client: every URL a tenant gives Keel to fetch
//! (reconciliation pulls today, site crawling later) goes through [`fetch`].
//!
//! Only http(s); the host must resolve to public unicast addresses only
//! (unless private ones are allowed in development); the connection is pinned
//! to the address that was checked, so a DNS answer cannot change between the
//! check and the connection; every redirect is checked again; the body is
//! bounded in bytes and the whole exchange in time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// Addresses Keel may fetch from: public unicast only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// GETs `url` within `limits`; `what` names the URL in errors (`pull_url`).
pub async fn fetch(what: &str, url: &str, limits: &FetchLimits) -> Result<Vec<u8>, FetchError> {
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
        if !limits.allow_private && !addresses.iter().all(|a| is_public(a.ip())) {
            return Err(refused(
                what,
                format!("{host} resolves to a private or loopback address"),
            ));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls_config()).clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(limits.timeout)
            .resolve(&host, address)
            .build()
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        let mut response = client
            .get(current.clone())
            .send()
            .await
            .map_err(|e| FetchError::Failed(format!("pulling {host}: {}", e.without_url())))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| refused(what, "a redirect without Location"))?;
            current = current.join(location).map_err(|e| refused("redirect", e))?;
            continue;
        }
        if !response.status().is_success() {
            return Err(FetchError::Failed(format!(
                "{host} answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Failed(format!("reading from {host}: {}", e.without_url())))?
        {
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(refused(
                    what,
                    format!("the response is larger than {} bytes", limits.max_bytes),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
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
        ];
        for (ip, public) in cases {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }
}
