//! Broker URLs: `mqtt://host:port` and `mqtts://host:port`.

use std::fmt;

/// Plain or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://`, plain TCP; default port 1883.
    Mqtt,
    /// `mqtts://`, TLS; default port 8883.
    Mqtts,
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Plain or TLS.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a broker URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("broker URL {url:?} is invalid: {reason} (expected mqtt://host:port or mqtts://host:port)")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            url: text.to_string(),
            reason,
        };
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
            (Scheme::Mqtts, rest)
        } else if let Some(rest) = text.strip_prefix("mqtt://") {
            (Scheme::Mqtt, rest)
        } else {
            return Err(err("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let default_port = match scheme {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port.parse().map_err(|_| err("bad port"))?),
                None if after.is_empty() => (host, default_port),
                None => return Err(err("junk after host")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().map_err(|_| err("bad port"))?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(err("bad host"));
        }
        if port == 0 {
            return Err(err("port 0"));
        }
        Ok(BrokerUrl {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_operators_write() {
        let url = BrokerUrl::parse("mqtts://broker.example:8884").expect("parses");
        assert_eq!(
            (url.scheme, url.host.as_str(), url.port),
            (Scheme::Mqtts, "broker.example", 8884)
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://10.0.0.1").expect("parses").port,
            1883
        );
        assert_eq!(BrokerUrl::parse("mqtts://h").expect("parses").port, 8883);
        let v6 = BrokerUrl::parse("mqtt://[::1]:1884").expect("parses");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "http://h:1",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://h:0",
            "mqtt://u@h",
            "h:1883",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
