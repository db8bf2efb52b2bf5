//! A throwaway PKI generated at test time: one CA and one server leaf it
//! signed, as PEM strings, with SANs covering the US1-FED intake names and
//! loopback. Owns certificate generation and writing the files; it must never
//! be used for anything but tests and benches (keys are not protected).

use std::fs;
use std::io;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Names every leaf from [`TestPki::generate`] covers, before the extra ones.
pub const DEFAULT_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "*.ddog-gov.com",
    "*.agent.ddog-gov.com",
    "*.logs.ddog-gov.com",
    "*.profile.ddog-gov.com",
];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a test key pair: {0}")]
    KeyPair(#[source] rcgen::Error),
    #[error("could not build certificate parameters (is every name a valid DNS name or IP?): {0}")]
    Params(#[source] rcgen::Error),
    #[error("could not sign the test {what} certificate: {source}")]
    Sign {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// A CA and a leaf signed by it, all PEM. The leaf's chain is just the leaf;
/// clients trust `ca_cert_pem`.
#[derive(Clone, Debug)]
pub struct TestPki {
    pub ca_cert_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
}

impl TestPki {
    /// Leaf for [`DEFAULT_NAMES`] plus `extra_names` (a name that parses as
    /// an IP address becomes an IP SAN).
    ///
    /// # Panics
    /// When a name is not a valid DNS name or IP; use [`TestPki::try_generate`]
    /// to get the error instead.
    pub fn generate(extra_names: &[&str]) -> TestPki {
        Self::try_generate(extra_names).expect("generate test PKI")
    }

    pub fn try_generate(extra_names: &[&str]) -> Result<TestPki, PkiError> {
        let names: Vec<&str> = DEFAULT_NAMES.iter().chain(extra_names.iter()).copied().collect();
        Self::try_generate_for(&names)
    }

    /// Leaf for exactly `names`, nothing else (to test name mismatches).
    ///
    /// # Panics
    /// When a name is not a valid DNS name or IP.
    pub fn generate_for(names: &[&str]) -> TestPki {
        Self::try_generate_for(names).expect("generate test PKI")
    }

    pub fn try_generate_for(names: &[&str]) -> Result<TestPki, PkiError> {
        let ca_key = KeyPair::generate().map_err(PkiError::KeyPair)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Params)?;
        ca_params.distinguished_name = distinguished_name("fipsrelay test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|source| PkiError::Sign { what: "CA", source })?;

        let leaf_key = KeyPair::generate().map_err(PkiError::KeyPair)?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf_params = CertificateParams::new(names).map_err(PkiError::Params)?;
        leaf_params.distinguished_name = distinguished_name("fipsrelay test intake");
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .map_err(|source| PkiError::Sign { what: "leaf", source })?;

        Ok(TestPki {
            ca_cert_pem: ca_cert.pem(),
            leaf_cert_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` (mode 0600) into `dir`,
    /// which must exist.
    pub fn write_to(&self, dir: impl AsRef<Path>) -> io::Result<()> {
        let dir = dir.as_ref();
        fs::write(dir.join("ca.pem"), &self.ca_cert_pem)?;
        fs::write(dir.join("cert.pem"), &self.leaf_cert_pem)?;
        write_private(&dir.join("key.pem"), self.leaf_key_pem.as_bytes())
    }
}

/// A self-signed CA certificate (PEM) named `common_name` that signed
/// nothing here: a client that trusts only it refuses every [`TestPki`]
/// leaf as signed by an unknown issuer (a CA of the same name as
/// [`TestPki`]'s would be found by name and fail on the signature instead).
pub fn unrelated_ca(common_name: &str) -> Result<String, PkiError> {
    let key = KeyPair::generate().map_err(PkiError::KeyPair)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Params)?;
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params.self_signed(&key).map_err(|source| PkiError::Sign { what: "CA", source })?.pem())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // The mode above applies only when the file is created.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn verify(pki: &TestPki, name: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let leaf = CertificateDer::from_pem_slice(pki.leaf_cert_pem.as_bytes()).unwrap();
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::now()).map(|_| ())
    }

    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn leaf_covers_default_and_extra_names() {
        let pki = TestPki::generate(&["intake.example.test", "10.1.2.3"]);
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "api.ddog-gov.com",
            "metrics.agent.ddog-gov.com",
            "agent-http-intake.logs.ddog-gov.com",
            "intake.profile.ddog-gov.com",
            "intake.example.test",
            "10.1.2.3",
        ] {
            verify(&pki, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(&pki, "ddog-gov.com").is_err());
        assert!(verify(&pki, "datadoghq.com").is_err());
        assert!(verify(&pki, "10.1.2.4").is_err());
    }

    #[test]
    fn generate_for_covers_only_given_names() {
        let pki = TestPki::generate_for(&["only.example.test"]);
        verify(&pki, "only.example.test").unwrap();
        assert!(verify(&pki, "localhost").is_err());
        assert!(verify(&pki, "metrics.agent.ddog-gov.com").is_err());
    }

    #[test]
    fn write_to_writes_three_files() {
        let dir = std::env::temp_dir().join(format!("loadgen-pki-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pki = TestPki::generate(&[]);
        pki.write_to(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join("ca.pem")).unwrap(), pki.ca_cert_pem);
        assert_eq!(fs::read_to_string(dir.join("cert.pem")).unwrap(), pki.leaf_cert_pem);
        assert_eq!(fs::read_to_string(dir.join("key.pem")).unwrap(), pki.leaf_key_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
