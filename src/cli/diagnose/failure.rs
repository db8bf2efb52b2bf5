//! Why a `diagnose` check failed, as a kind an operator can act on, and the
//! fix for each kind; and the grouping that says one root cause once, with
//! the hosts it hit, however many there are.
//!
//! It only classifies and words: it opens nothing.

use std::fmt::Write as _;

use crate::upstream::tls::TlsError;

/// What went wrong, by what fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The intake's name (or the proxy's) does not resolve.
    Dns,
    /// Connecting was refused (RST).
    ConnectRefused,
    /// Connecting got no answer within `upstream.connect_timeout`.
    ConnectTimeout,
    /// No route, network unreachable, and the like.
    ConnectOther,
    /// The egress proxy's step failed; its message carries the fix.
    Proxy,
    /// The certificate does not chain to a trusted root (`UnknownIssuer`,
    /// or `BadSignature`: a trusted CA's name, another key).
    TlsUnknownIssuer,
    /// The certificate is expired or not valid yet.
    TlsExpired,
    /// The certificate is for another name.
    TlsWrongName,
    /// `upstream.protocol = "h2"` and the intake did not pick h2 by ALPN.
    TlsNoH2,
    /// No TLS version or cipher suite in common.
    TlsNoCommonSuite,
    /// The handshake was cut (closed, reset) or did not finish in time.
    TlsCut,
    /// Any other TLS failure.
    TlsOther,
    /// The intake accepted the request but did not answer in time.
    AnswerTimeout,
    /// The intake's answer was cut or malformed.
    AnswerBroken,
    /// `GET /api/v1/validate` refused the API key.
    ApiKeyRejected,
}

impl Kind {
    /// The kind of a failed TLS handshake.
    pub fn of_tls(e: &TlsError) -> Kind {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            TlsError::Handshake(E::InvalidCertificate(c)) => match c {
                // BadSignature: an issuer of the right name, not the right key.
                C::UnknownIssuer | C::BadSignature => Kind::TlsUnknownIssuer,
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    Kind::TlsExpired
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => Kind::TlsWrongName,
                _ => Kind::TlsOther,
            },
            TlsError::Handshake(E::NoApplicationProtocol) => Kind::TlsNoH2,
            TlsError::Handshake(E::PeerIncompatible(_))
            | TlsError::Handshake(E::AlertReceived(
                A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity,
            )) => Kind::TlsNoCommonSuite,
            TlsError::HandshakeEof | TlsError::HandshakeIo(_) => Kind::TlsCut,
            _ => Kind::TlsOther,
        }
    }

    /// The kind of a failed TCP connect.
    pub fn of_connect(e: &std::io::Error) -> Kind {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Kind::ConnectRefused,
            std::io::ErrorKind::TimedOut => Kind::ConnectTimeout,
            _ => Kind::ConnectOther,
        }
    }

    /// What the operator can do, for the intake domain `site`; `trust` says
    /// where the relay takes its roots from.
    pub fn fix(self, site: &str, trust: &str) -> String {
        match self {
            Kind::Dns => format!(
                "this host cannot resolve the intake's names: check the resolver (/etc/resolv.conf, or dns.nameservers in the relay's config) and that it answers for *.{site} (`getent hosts metrics.agent.{site}`); where only a proxy reaches out, set upstream.proxy.url and let the proxy resolve"
            ),
            Kind::ConnectRefused => format!(
                "something refuses TCP 443 toward the intake: an egress firewall or security group, or a network that allows out only through a proxy: allow outbound TCP 443 to *.{site}, or set upstream.proxy.url"
            ),
            Kind::ConnectTimeout => format!(
                "nothing answers on TCP 443 within upstream.connect_timeout: outbound traffic is dropped (egress firewall, security group, no NAT or route): allow outbound TCP 443 to *.{site}, or set upstream.proxy.url to the site's proxy"
            ),
            Kind::ConnectOther => format!(
                "this host has no route to the intake: check its default route and NAT, or set upstream.proxy.url to a proxy that reaches *.{site}"
            ),
            Kind::Proxy => "the proxy's answer above says what to change (upstream.proxy.url, credentials_file, the proxy's ACLs)".into(),
            Kind::TlsUnknownIssuer => format!(
                "the certificate is not signed by a CA the relay trusts ({trust}). Either a proxy or firewall intercepts TLS and signs with its own CA: exempt *.{site} from TLS inspection (a FIPS path must not be inspected); or the trust store lacks the intake's root (DigiCert Global Root G2): install the CA bundle (ca-certificates), or point upstream.ca_file at a PEM file that holds it"
            ),
            Kind::TlsExpired => "the certificate is outside its validity: check this host's clock (timedatectl), or a TLS-inspecting proxy serving a stale certificate".into(),
            Kind::TlsWrongName => format!(
                "the certificate is for another name: the connection reaches something other than the intake (a DNS override, a transparent proxy), or upstream.server_name is wrong: check what *.{site} resolves to, or remove upstream.server_name"
            ),
            Kind::TlsNoH2 => "upstream.protocol = \"h2\" but the intake did not pick h2 by ALPN (a proxy in between may strip it): set upstream.protocol = \"auto\" (the default), which speaks HTTP/1.1 to such a host".into(),
            Kind::TlsNoCommonSuite => format!(
                "no TLS version or cipher suite in common: the relay offers only TLS 1.2/1.3 with AES-GCM (FIPS); the intake accepts them, so a middlebox answers instead: exempt *.{site} from TLS inspection"
            ),
            Kind::TlsCut => format!(
                "the TLS handshake was cut or never finished: a firewall, IPS or proxy that filters TLS to *.{site} is in the way: allow it, or set upstream.proxy.url"
            ),
            Kind::TlsOther => "see the TLS error; `fipsrelay version` shows what the relay offers".into(),
            Kind::AnswerTimeout => "the intake took the request but did not answer within upstream.response_timeout: run diagnose again; if it persists, check a proxy in the path".into(),
            Kind::AnswerBroken => "the answer was cut or malformed: a proxy or middlebox in the path may alter the traffic: exempt the intake from it".into(),
            Kind::ApiKeyRejected => format!(
                "the intake refused the API key: pass a key of the {site} organisation (--api-key or DD_API_KEY, the Agent's api_key)"
            ),
        }
    }
}

/// One failed check: its kind and the full reason for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub reason: String,
}

impl Failure {
    pub fn new(kind: Kind, reason: impl Into<String>) -> Failure {
        Failure { kind, reason: reason.into() }
    }

    /// The reason with this host's own names and address taken out, so that
    /// the same cause on two hosts reads the same.
    pub fn general(&self, names: &[&str]) -> String {
        let mut r = self.reason.clone();
        for n in names.iter().filter(|n| !n.is_empty()) {
            r = r.replace(n, "HOST");
        }
        r
    }
}

/// Failures grouped by cause, in order of first appearance: (kind,
/// host-free reason, the hosts).
pub fn group<'a>(
    failures: impl IntoIterator<Item = (&'a str, String, &'a Failure)>,
) -> Vec<(Kind, String, Vec<String>)> {
    let mut groups: Vec<(Kind, String, Vec<String>)> = Vec::new();
    for (host, general, f) in failures {
        match groups.iter_mut().find(|(k, g, _)| *k == f.kind && *g == general) {
            Some((_, _, hosts)) => hosts.push(host.to_string()),
            None => groups.push((f.kind, general, vec![host.to_string()])),
        }
    }
    groups
}

/// The causes block: each cause once, with its hosts and its fix.
pub fn render_causes(groups: &[(Kind, String, Vec<String>)], site: &str, trust: &str) -> String {
    let mut s = String::new();
    for (i, (kind, reason, hosts)) in groups.iter().enumerate() {
        let n = hosts.len();
        let _ = writeln!(s, "cause {}: {reason}", i + 1);
        // The FAIL lines name every host; a short list is repeated here.
        match n {
            1 => writeln!(s, "     hosts:       1 ({})", hosts[0]),
            2..=3 => writeln!(s, "     hosts:       {n} ({})", hosts.join(", ")),
            _ => writeln!(s, "     hosts:       {n} (the FAIL lines marked cause {})", i + 1),
        }
        .ok();
        let _ = writeln!(s, "     fix:         {}", kind.fix(site, trust));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_get_their_kind() {
        use rustls::{CertificateError as C, Error as E};
        let k = |e| Kind::of_tls(&TlsError::Handshake(e));
        assert_eq!(k(E::InvalidCertificate(C::UnknownIssuer)), Kind::TlsUnknownIssuer);
        assert_eq!(k(E::InvalidCertificate(C::Expired)), Kind::TlsExpired);
        assert_eq!(k(E::InvalidCertificate(C::NotValidForName)), Kind::TlsWrongName);
        assert_eq!(k(E::NoApplicationProtocol), Kind::TlsNoH2);
        assert_eq!(k(E::AlertReceived(rustls::AlertDescription::HandshakeFailure)), Kind::TlsNoCommonSuite);
        assert_eq!(Kind::of_tls(&TlsError::HandshakeEof), Kind::TlsCut);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Kind::of_connect(&refused), Kind::ConnectRefused);
    }

    #[test]
    fn one_cause_is_said_once_with_its_hosts() {
        let hosts = ["metrics.agent.ddog-gov.com", "api.ddog-gov.com", "trace.agent.ddog-gov.com"];
        let failures: Vec<Failure> = hosts
            .iter()
            .map(|h| {
                Failure::new(
                    Kind::TlsUnknownIssuer,
                    format!("TLS with {h} failed: invalid peer certificate: UnknownIssuer"),
                )
            })
            .chain([Failure::new(Kind::Dns, "DNS (system resolver): no record for x.ddog-gov.com")])
            .collect();
        let all = hosts.iter().copied().chain(["x.ddog-gov.com"]);
        let groups = group(all.zip(&failures).map(|(h, f)| (h, f.general(&[h]), f)));
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].1, "TLS with HOST failed: invalid peer certificate: UnknownIssuer");
        assert_eq!(groups[0].2.len(), 3);
        let text = render_causes(&groups, "ddog-gov.com", "the system trust store");
        assert_eq!(text.matches("UnknownIssuer").count(), 1, "{text}");
        assert!(
            text.contains("hosts:       3 (metrics.agent.ddog-gov.com, api.ddog-gov.com, trace.agent.ddog-gov.com)"),
            "{text}"
        );
        assert!(text.contains("upstream.ca_file") && text.contains("TLS inspection"), "{text}");
        assert!(
            text.contains("cause 2: DNS (system resolver): no record for HOST") && text.contains("resolv.conf"),
            "{text}"
        );
    }
}
