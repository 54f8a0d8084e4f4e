//! Per-client-IP throttling with `governor`, shared by the admin and proxy listeners.
//!
//! The client is the connection's peer, or the address a trusted proxy forwarded
//! (`X-Forwarded-For`, read from the right, skipping trusted hops).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// The original service allowed 10 requests per second per incoming IP.
pub const DEFAULT_PER_SECOND: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Sustained requests per second per client IP; 0 turns throttling off.
    pub per_second: u32,
    /// Requests a client may send at once before the rate applies.
    pub burst: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_PER_SECOND,
            burst: DEFAULT_PER_SECOND,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ThrottleConfig {
    /// The defaults, trusting loopback to name the client: for a listener whose callers may
    /// come through a proxy on the same host (the admin listener, behind the proxy listener).
    pub fn trusting_loopback() -> Self {
        Self {
            trusted_proxies: vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            ..Self::default()
        }
    }

    /// Reads the section of a listener that trusts loopback by default. A section that sets
    /// only the rate keeps that trust: with plain defaults it would silently drop it, and every
    /// client behind the local proxy would share one limit.
    pub fn deserialize_trusting_loopback<'de, D>(deserializer: D) -> Result<Self, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            per_second: Option<u32>,
            burst: Option<u32>,
            trusted_proxies: Option<Vec<IpAddr>>,
        }
        let fields = Fields::deserialize(deserializer)?;
        let defaults = Self::trusting_loopback();
        Ok(Self {
            per_second: fields.per_second.unwrap_or(defaults.per_second),
            burst: fields.burst.unwrap_or(defaults.burst),
            trusted_proxies: fields.trusted_proxies.unwrap_or(defaults.trusted_proxies),
        })
    }
}

/// A keyed rate limiter and the rules for finding the client's address.
pub struct Throttle {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<IpAddr>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl Throttle {
    pub fn new(config: &ThrottleConfig) -> Self {
        let limiter = NonZeroU32::new(config.per_second).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// The client's address: the peer, unless the peer is a trusted proxy that says otherwise.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted.contains(&peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.trusted.contains(ip))
            .unwrap_or(peer)
    }

    /// `Err(wait)` when `client` must wait before its next request.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Forget idle clients now and then so the table does not grow without bound.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_request_in_a_second_is_refused_for_that_ip_only() {
        let throttle = Throttle::new(&ThrottleConfig::default());
        let (one, other): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );

        let first_ten = (0..10).all(|_| throttle.check(one).is_ok());
        let eleventh = throttle.check(one);

        assert!(first_ten);
        assert!(eleventh.is_err());
        assert!(throttle.check(other).is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().expect("ip");
        let config = ThrottleConfig {
            trusted_proxies: vec![proxy],
            ..Default::default()
        };
        let throttle = Throttle::new(&config);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 127.0.0.1".parse().expect("header"),
        );

        let via_trusted = throttle.client_ip(proxy, &headers);
        let via_stranger = throttle.client_ip("198.51.100.7".parse().expect("ip"), &headers);

        assert_eq!(via_trusted, "203.0.113.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(via_stranger, "198.51.100.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_section_setting_only_the_rate_keeps_trusting_loopback() {
        #[derive(Deserialize)]
        struct Admin {
            #[serde(deserialize_with = "ThrottleConfig::deserialize_trusting_loopback")]
            throttle: ThrottleConfig,
        }

        let rate_only: Admin =
            serde_json::from_str(r#"{"throttle": {"per_second": 20}}"#).expect("valid");
        let none_trusted: Admin =
            serde_json::from_str(r#"{"throttle": {"trusted_proxies": []}}"#).expect("valid");
        let misspelt = serde_json::from_str::<Admin>(r#"{"throttle": {"per_secnd": 20}}"#);

        assert_eq!(rate_only.throttle.per_second, 20);
        assert_eq!(
            rate_only.throttle.trusted_proxies,
            ThrottleConfig::trusting_loopback().trusted_proxies
        );
        assert_eq!(none_trusted.throttle.per_second, DEFAULT_PER_SECOND);
        assert!(none_trusted.throttle.trusted_proxies.is_empty());
        assert!(misspelt.is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after(Duration::from_secs(2)), 2);
    }
}
