//! The partner URL of a request: parsed once, with what the peer and the Host header need.

use std::fmt;

/// A partner URL, always `https`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as the mapping key compares it.
    pub url: String,
    /// Host name or IP literal, without brackets; what DNS resolves.
    pub host: String,
    pub port: u16,
    /// Server name for SNI and verification: the host (an IP literal works with rustls).
    pub sni: String,
    /// `host[:port]` as the Host header carries it.
    pub authority: String,
    pub path_and_query: String,
}

/// Why a URL cannot be a partner target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    NotHttps,
    Malformed,
    HasUserInfo,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotHttps => "the partner URL must start with https://",
            Self::Malformed => "the partner URL does not parse; send a full https:// URL",
            Self::HasUserInfo => "the partner URL must not carry credentials before the host",
        })
    }
}

impl std::error::Error for TargetError {}

impl Target {
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: http::Uri = url.parse().map_err(|_| TargetError::Malformed)?;
        if uri.scheme_str() != Some("https") {
            return Err(TargetError::NotHttps);
        }
        let authority = uri.authority().ok_or(TargetError::Malformed)?;
        if authority.as_str().contains('@') {
            return Err(TargetError::HasUserInfo);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError::Malformed);
        }
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            sni: host.to_owned(),
            authority: authority.as_str().to_owned(),
            path_and_query: if path_and_query.is_empty() {
                "/".into()
            } else {
                path_and_query.into()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_path() {
        let t = Target::parse("https://localhost:8443/api/pay?x=1").expect("valid");

        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("localhost", 8443, "localhost:8443")
        );
        assert_eq!(t.path_and_query, "/api/pay?x=1");
    }

    #[test]
    fn an_ipv6_literal_loses_its_brackets_for_dns_and_sni() {
        let t = Target::parse("https://[::1]/").expect("valid");

        assert_eq!(
            (t.host.as_str(), t.sni.as_str(), t.port),
            ("::1", "::1", 443)
        );
    }

    #[test]
    fn refuses_plain_http_and_credentials() {
        assert_eq!(
            Target::parse("http://p.example/"),
            Err(TargetError::NotHttps)
        );
        assert_eq!(
            Target::parse("https://u:p@p.example/"),
            Err(TargetError::HasUserInfo)
        );
    }
}
