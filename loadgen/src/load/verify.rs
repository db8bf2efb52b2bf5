//! `--verify`: talks to the mock intake's control endpoints over TLS
//! (`POST /mock/reset` before the run, `GET /mock/digest` after it) and
//! compares, as multisets of body hashes, what the client saw accepted with
//! what the mock recorded. Both sides keep a fixed-size
//! [`BodyDigest`](crate::digest::BodyDigest), so a run of any length is
//! verified in bounded memory; the digests name the bodies that differ when
//! there are few enough. Lost, duplicated and corrupted are reported only when
//! the comparison proves them. Builds its rustls config with the ring provider
//! only; it never sends load.

use std::collections::HashMap;

use crate::digest::{BodyDigest, Difference, SentFilter};
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

use super::report::VerifyReport;
use crate::mock::{MockDigest, DIGEST_PATH, RESET_PATH};

/// Connect, read and write timeout for a control request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the mock intake is and how to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// `https://host:port` of the mock (path ignored).
    pub url: String,
    /// PEM of the CA that signed the mock's certificate.
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("--verify {0:?} is not an https://host:port URL")]
    BadUrl(String),
    #[error("the mock's CA is not usable PEM: {0}")]
    Ca(String),
    #[error("rustls refused the verify client settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot reach the mock intake at {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the mock intake answered {status} to {path}; is {url} a loadgen mock-intake?")]
    Status { url: String, path: &'static str, status: u16 },
    #[error("the mock intake's hash list is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Control client for one mock intake.
pub struct MockControl {
    url: String,
    host: String,
    port: u16,
    config: Arc<rustls::ClientConfig>,
}

impl MockControl {
    pub fn new(opts: &VerifyOptions) -> Result<MockControl, VerifyError> {
        let bad = || VerifyError::BadUrl(opts.url.clone());
        let rest = opts.url.strip_prefix("https://").ok_or_else(bad)?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once("]:").ok_or_else(bad)?;
            (h, p)
        } else {
            authority.rsplit_once(':').ok_or_else(bad)?
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(opts.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| VerifyError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| VerifyError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(VerifyError::Ca("no certificate in it".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MockControl { url: opts.url.clone(), host: host.to_owned(), port, config: Arc::new(config) })
    }

    fn request(&self, method: &str, path: &'static str) -> Result<Vec<u8>, VerifyError> {
        let io = |source| VerifyError::Io { url: self.url.clone(), source };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).map_err(io)?;
        tcp.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        tcp.set_write_timeout(Some(CONTROL_TIMEOUT)).map_err(io)?;
        let conn = ClientConnection::new(Arc::clone(&self.config), name)?;
        let mut tls = BufReader::new(StreamOwned::new(conn, tcp));
        crate::client::send(tls.get_mut(), method, path, &[("Connection", "close")], b"").map_err(io)?;
        let answer = crate::client::read_response(&mut tls, false).map_err(io)?;
        if answer.status != 200 {
            return Err(VerifyError::Status { url: self.url.clone(), path, status: answer.status });
        }
        Ok(answer.body)
    }

    /// Zeroes the mock's counters and records.
    pub fn reset(&self) -> Result<(), VerifyError> {
        self.request("POST", RESET_PATH).map(drop)
    }

    pub fn digest(&self) -> Result<MockDigest, VerifyError> {
        Ok(serde_json::from_slice(&self.request("GET", DIGEST_PATH)?)?)
    }
}

/// Bodies sent without a 2xx answer that loadgen keeps one by one (8 MiB);
/// past it, such bodies can no longer be told from duplicates.
pub const MAX_UNCONFIRMED: usize = 1 << 20;

/// What the client sent, by outcome.
#[derive(Default)]
pub struct SentBodies {
    /// Digest of the bodies answered 2xx.
    pub ok: BodyDigest,
    /// The same bodies, for "was this body sent?" ([`SentFilter`]).
    pub ok_filter: Option<std::sync::Arc<SentFilter>>,
    /// Hashes of bodies sent (at least in part) without a 2xx answer: they
    /// may or may not have reached the intake.
    pub unconfirmed: Vec<u64>,
    /// More than [`MAX_UNCONFIRMED`] such bodies: not all were kept.
    pub unconfirmed_truncated: bool,
}

fn counts(hashes: &[u64]) -> HashMap<u64, i64> {
    let mut map = HashMap::with_capacity(hashes.len());
    for &h in hashes {
        *map.entry(h).or_insert(0) += 1;
    }
    map
}

/// Compares `sent` with what the mock recorded. With D = recorded − answered
/// 2xx, for each body of D:
/// - fewer at the mock than answered 2xx: lost;
/// - more at the mock: first the bodies sent without a 2xx that still got
///   through (unconfirmed, not a mismatch), then duplicated when the body was
///   sent, or corrupted when it never was (bytes the client never sent).
///
/// When D is too large to name its bodies, the counts still prove a lower
/// bound on the lost ones; nothing else is claimed.
pub fn compare(sent: &SentBodies, mock: &MockDigest) -> VerifyReport {
    let recorded = &mock.digest;
    let mut report = VerifyReport {
        bodies: sent.ok.count,
        mock_bodies: recorded.count,
        mock_requests: mock.requests,
        complete: true,
        ..VerifyReport::default()
    };
    let items = match recorded.difference(&sent.ok) {
        Difference::Equal => Vec::new(),
        Difference::Named(items) => items,
        Difference::TooLarge { count } => {
            // Too many differences to name. All of them explained by the
            // unconfirmed bodies is still a match; else only the count proves
            // anything.
            let mut expected = sent.ok.clone();
            for &h in &sent.unconfirmed {
                expected.insert(h);
            }
            if !sent.unconfirmed_truncated && recorded.difference(&expected) == Difference::Equal {
                report.unconfirmed = sent.unconfirmed.len() as u64;
                report.matched = true;
                return report;
            }
            report.complete = false;
            report.lost = (-count).max(0) as u64;
            return report;
        }
    };
    let mut unconfirmed = counts(&sent.unconfirmed);
    for (h, n) in items {
        if n < 0 {
            report.lost += n.unsigned_abs();
            continue;
        }
        let u = unconfirmed.get(&h).copied().unwrap_or(0);
        let through = n.min(u);
        if through > 0 {
            unconfirmed.insert(h, u - through);
        }
        report.unconfirmed += through as u64;
        let extra = (n - through) as u64;
        if extra == 0 {
            continue;
        }
        if sent.unconfirmed_truncated {
            // Could be one of the unconfirmed bodies not kept.
            report.complete = false;
        }
        // Sent (answered 2xx, or unconfirmed): a duplicate. Never sent: corrupted.
        let was_sent = u > 0 || sent.ok_filter.as_ref().is_some_and(|f| f.may_contain(h));
        if was_sent {
            report.duplicated += extra;
        } else {
            report.corrupted += extra;
        }
    }
    report.matched = report.complete && report.lost == 0 && report.duplicated == 0 && report.corrupted == 0;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ok: &[u64], unconfirmed: &[u64]) -> SentBodies {
        let filter = std::sync::Arc::new(SentFilter::default());
        let mut digest = BodyDigest::new();
        for &h in ok {
            digest.insert(h);
            filter.insert(h);
        }
        SentBodies { ok: digest, ok_filter: Some(filter), unconfirmed: unconfirmed.to_vec(), ..SentBodies::default() }
    }

    fn mock(hashes: &[u64]) -> MockDigest {
        let mut digest = BodyDigest::new();
        for &h in hashes {
            digest.insert(h);
        }
        MockDigest { requests: hashes.len() as u64, digest }
    }

    #[test]
    fn multiset_comparison() {
        let r = compare(&sent(&[1, 2, 3], &[]), &mock(&[3, 1, 2]));
        assert!(r.matched && r.complete);
        assert_eq!(r.bodies, 3);

        let r = compare(&sent(&[1, 2, 3], &[]), &mock(&[1, 3]));
        assert_eq!((r.matched, r.lost, r.duplicated, r.corrupted), (false, 1, 0, 0));

        let r = compare(&sent(&[1, 2, 3], &[]), &mock(&[1, 2, 2, 3, 3, 3]));
        assert_eq!((r.matched, r.lost, r.duplicated, r.corrupted), (false, 0, 3, 0));

        let r = compare(&sent(&[1, 2], &[]), &mock(&[1, 2, 99]));
        assert_eq!((r.matched, r.lost, r.duplicated, r.corrupted), (false, 0, 0, 1));
    }

    #[test]
    fn unconfirmed_bodies_are_not_a_mismatch() {
        // 7 got a 503 but reached the mock once; 8 errored and never arrived.
        let r = compare(&sent(&[1], &[7, 8]), &mock(&[1, 7]));
        assert!(r.matched);
        assert_eq!(r.unconfirmed, 1);
        // ...but arriving twice is one duplicate.
        let r = compare(&sent(&[1], &[7]), &mock(&[1, 7, 7]));
        assert_eq!((r.matched, r.unconfirmed, r.duplicated, r.corrupted), (false, 1, 1, 0));
    }

    #[test]
    fn long_runs_are_verified_in_bounded_memory() {
        // 2 million bodies: equal digests match; a few lost are named.
        let hs: Vec<u64> = (0..2_000_000u64).map(|i| crate::hash::body_hash(&i.to_le_bytes())).collect();
        let s = sent(&hs, &[]);
        let r = compare(&s, &mock(&hs));
        assert!(r.matched && r.complete, "{r:?}");
        let r = compare(&s, &mock(&hs[3..]));
        assert_eq!((r.matched, r.lost, r.duplicated, r.corrupted, r.complete), (false, 3, 0, 0, true));
        // Too many lost to name: the count still proves how many.
        let r = compare(&s, &mock(&hs[..1_000_000]));
        assert_eq!((r.matched, r.lost, r.complete), (false, 1_000_000, false));
    }

    #[test]
    fn many_unconfirmed_arrivals_still_match() {
        // 100,000 bodies answered 503 that all reached the mock: too many to
        // name, but exactly the unconfirmed set.
        let un: Vec<u64> = (0..100_000u64).map(|i| crate::hash::body_hash(&i.to_be_bytes())).collect();
        let r = compare(&sent(&[1, 2], &un), &mock(&[&[1u64, 2][..], &un].concat()));
        assert!(r.matched && r.unconfirmed == 100_000, "{r:?}");
        // Half of them arrived: nothing is proven lost, and no match is claimed.
        let r = compare(&sent(&[1, 2], &un), &mock(&[&[1u64, 2][..], &un[..50_000]].concat()));
        assert!(!r.matched && !r.complete && r.lost == 0, "{r:?}");
    }

    #[test]
    fn parses_urls() {
        let ca = crate::pki::TestPki::generate(&[]).ca_cert_pem;
        let opts = |url: &str| VerifyOptions { url: url.to_owned(), ca_pem: ca.clone() };
        let c = MockControl::new(&opts("https://127.0.0.1:18443")).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 18443));
        let c = MockControl::new(&opts("https://[::1]:9/x")).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9));
        assert!(matches!(MockControl::new(&opts("http://127.0.0.1:1")), Err(VerifyError::BadUrl(_))));
        assert!(matches!(MockControl::new(&opts("https://127.0.0.1")), Err(VerifyError::BadUrl(_))));
        let bad_ca = VerifyOptions { url: "https://127.0.0.1:1".into(), ca_pem: "nope".into() };
        assert!(matches!(MockControl::new(&bad_ca), Err(VerifyError::Ca(_))));
    }
}
