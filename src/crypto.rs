//! FIPS cryptography: the aws-lc-rs FIPS provider, the suite and group lists,
//! the trust store, and the one place a rustls `ClientConfig` is built.
//!
//! Every config built here is checked with `ClientConfig::fips()`; the relay
//! refuses to start when the check fails. This module must never build a
//! config that skips certificate verification or uses a non-FIPS provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs as provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the AWS-LC module is not in FIPS mode ({0}); this build cannot relay traffic")]
    NotFipsModule(&'static str),
    #[error("the TLS configuration is not FIPS-compliant (ClientConfig::fips() is false); refusing to start")]
    NotFipsConfig,
    #[error("cannot read upstream.ca_file {path}: {cause}; point it at a PEM file of CA certificates")]
    CaFile { path: PathBuf, cause: String },
    #[error("upstream.ca_file {0} holds no certificate; point it at a PEM file of CA certificates")]
    CaFileEmpty(PathBuf),
    #[error(
        "the system trust store has no usable CA certificate ({0}); install ca-certificates or set upstream.ca_file"
    )]
    NoSystemRoots(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS 1.3 and 1.2 suites accepted by the US1-FED intake: AES-GCM only (DESIGN §1).
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    use provider::cipher_suite::*;
    vec![
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ]
}

/// The aws-lc-rs provider restricted to our suites and to FIPS-approved groups.
pub fn fips_provider() -> CryptoProvider {
    let mut p = provider::default_provider();
    p.cipher_suites = cipher_suites();
    p.kx_groups.retain(|g| g.fips());
    p
}

/// Checks that the linked AWS-LC runs in FIPS mode.
pub fn assert_fips_module() -> Result<(), CryptoError> {
    aws_lc_rs::try_fips_mode().map_err(CryptoError::NotFipsModule)
}

/// "AWS-LC FIPS <version>", for `version` and the start log line.
pub fn module_description() -> String {
    format!("AWS-LC FIPS {}", aws_lc_rs::awslc_version())
}

/// Where certificates are checked against.
#[derive(Debug, Clone)]
pub enum TrustSource {
    System,
    CaFile(PathBuf),
}

fn load_roots(trust: &TrustSource) -> Result<RootCertStore, CryptoError> {
    let mut roots = RootCertStore::empty();
    match trust {
        TrustSource::CaFile(path) => {
            let certs = read_pem_certs(path)?;
            if certs.is_empty() {
                return Err(CryptoError::CaFileEmpty(path.clone()));
            }
            for c in certs {
                roots.add(c).map_err(|e| CryptoError::CaFile { path: path.clone(), cause: e.to_string() })?;
            }
        }
        TrustSource::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why =
                    found.errors.first().map(|e| e.to_string()).unwrap_or_else(|| "no certificate found".to_string());
                return Err(CryptoError::NoSystemRoots(why));
            }
        }
    }
    Ok(roots)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CryptoError> {
    let err = |cause: String| CryptoError::CaFile { path: path.to_path_buf(), cause };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    iter.collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))
}

/// Builds the upstream client config: FIPS provider, TLS 1.3 + 1.2, AES-GCM,
/// verification against `trust`, resumption on. Fails unless `fips()` holds.
pub fn client_config(trust: &TrustSource) -> Result<Arc<ClientConfig>, CryptoError> {
    assert_fips_module()?;
    let roots = load_roots(trust)?;
    let config = ClientConfig::builder_with_provider(Arc::new(fips_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !config.fips() {
        return Err(CryptoError::NotFipsConfig);
    }
    Ok(Arc::new(config))
}

/// Lines for `fipsrelay version`: the protocol versions and suites on offer.
pub fn offer_description() -> Vec<String> {
    let p = fips_provider();
    let suites: Vec<String> = p.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
    let groups: Vec<String> = p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect();
    vec![
        "tls versions: TLS1.3, TLS1.2".to_string(),
        format!("cipher suites: {}", suites.join(", ")),
        format!("key exchange groups: {}", groups.join(", ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_is_fips() {
        assert_fips_module().unwrap();
        assert!(fips_provider().fips());
    }

    #[test]
    fn only_aes_gcm_suites() {
        for s in fips_provider().cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(name.contains("AES") && name.contains("GCM"), "{name}");
        }
    }

    #[test]
    fn ca_file_errors_name_the_key() {
        let e = client_config(&TrustSource::CaFile("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(e.to_string().contains("upstream.ca_file"), "{e}");
        let dir = std::env::temp_dir().join(format!("fipsrelay-crypto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let e = client_config(&TrustSource::CaFile(empty)).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
