//! `--verify`: talks to the mock intake's control endpoints over TLS
//! (`POST /mock/reset` before the run, `GET /mock/hashes` after it) and
//! compares, as multisets of body hashes, what the client saw accepted with
//! what the mock recorded. Builds its rustls config with the ring provider
//! only; it never sends load.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

use super::report::VerifyReport;
use crate::mock::{MockHashes, HASHES_PATH, RESET_PATH};

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

    pub fn hashes(&self) -> Result<MockHashes, VerifyError> {
        Ok(serde_json::from_slice(&self.request("GET", HASHES_PATH)?)?)
    }
}

/// What the client sent, by outcome.
#[derive(Clone, Debug, Default)]
pub struct SentHashes {
    /// Hashes of bodies answered 2xx.
    pub ok: Vec<u64>,
    /// Hashes of bodies sent (at least in part) without a 2xx answer.
    pub unconfirmed: Vec<u64>,
    /// Some hashes were not kept (past the client's bound).
    pub truncated: bool,
}

fn counts(hashes: &[u64]) -> HashMap<u64, u64> {
    let mut map = HashMap::with_capacity(hashes.len());
    for &h in hashes {
        *map.entry(h).or_insert(0) += 1;
    }
    map
}

/// Compares `sent` with what the mock recorded. For each hash: answered 2xx
/// `a` times, sent without 2xx `u` times, recorded `m` times:
/// - `m < a`: `a - m` lost;
/// - `m > a`: up to `u` of the extra are unconfirmed (a non-2xx that still
///   got through), the rest duplicated — or corrupted when `a + u = 0`
///   (bytes the client never sent).
pub fn compare(sent: &SentHashes, mock: &MockHashes) -> VerifyReport {
    let ok = counts(&sent.ok);
    let unconfirmed = counts(&sent.unconfirmed);
    let recorded = counts(&mock.hashes);
    let mut report = VerifyReport {
        bodies: sent.ok.len() as u64,
        mock_bodies: mock.hashes.len() as u64,
        mock_requests: mock.requests,
        complete: !sent.truncated && mock.requests == mock.hashes.len() as u64,
        ..VerifyReport::default()
    };
    for (hash, &a) in &ok {
        let m = recorded.get(hash).copied().unwrap_or(0);
        report.lost += a.saturating_sub(m);
    }
    for (hash, &m) in &recorded {
        let a = ok.get(hash).copied().unwrap_or(0);
        let u = unconfirmed.get(hash).copied().unwrap_or(0);
        if a + u == 0 {
            report.corrupted += m;
        } else if m > a {
            let extra = m - a;
            report.unconfirmed += extra.min(u);
            report.duplicated += extra.saturating_sub(u);
        }
    }
    report.matched = report.complete && report.lost == 0 && report.duplicated == 0 && report.corrupted == 0;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ok: &[u64], unconfirmed: &[u64]) -> SentHashes {
        SentHashes { ok: ok.to_vec(), unconfirmed: unconfirmed.to_vec(), truncated: false }
    }

    fn mock(hashes: &[u64]) -> MockHashes {
        MockHashes { requests: hashes.len() as u64, hashes: hashes.to_vec() }
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
        assert_eq!((r.matched, r.unconfirmed, r.duplicated), (false, 1, 1));
    }

    #[test]
    fn incomplete_lists_never_match() {
        let m = MockHashes { requests: 5, hashes: vec![1, 2] };
        let r = compare(&sent(&[1, 2], &[]), &m);
        assert!(!r.matched && !r.complete);
        let r = compare(&SentHashes { ok: vec![1], unconfirmed: vec![], truncated: true }, &mock(&[1]));
        assert!(!r.matched);
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
