//! FIPS cryptography: the aws-lc-rs FIPS provider, the suite and group lists,
//! the trust store, the one place a rustls `ClientConfig` is built, and the
//! table of AWS-LC FIPS modules with their CMVP status ([`MODULE_TABLE`]).
//!
//! Every config built here is checked with `ClientConfig::fips()`; the relay
//! refuses to start when the check fails, and when the linked module is not
//! one the table marks validated (unless `crypto.allow_unvalidated_module`).
//! This module must never build a config that skips certificate verification
//! or uses a non-FIPS provider, and never reports a module it has not read
//! from the linked library at run time.

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
    #[error("upstream.ca_file {path}: {cause}; point it at a PEM file of CA certificates (at most 16 MiB)")]
    CaFile { path: PathBuf, cause: String },
    #[error("upstream.ca_file {0} holds no certificate; point it at a PEM file of CA certificates")]
    CaFileEmpty(PathBuf),
    #[error(
        "the system trust store has no usable CA certificate ({0}); install ca-certificates or set upstream.ca_file"
    )]
    NoSystemRoots(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "the linked FIPS module is {module}, which is not a CMVP-validated module; build fipsrelay as shipped \
         (Cargo.lock pins {PINNED_CRATE} = AWS-LC FIPS {PINNED_MODULE_VERSION}, certificate #{PINNED_CERTIFICATE}; \
         see docs/security.md#why-these-versions-are-pinned), or set crypto.allow_unvalidated_module = true to run it anyway"
    )]
    UnvalidatedModule { module: String },
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

/// The crate that carries the module, as `Cargo.toml` pins it (`=`) and
/// `deny.toml` enforces. Kept in step with [`PINNED_MODULE_VERSION`] by a test.
pub const PINNED_CRATE: &str = "aws-lc-fips-sys 0.13.11";
/// The AWS-LC FIPS library version that [`PINNED_CRATE`] builds.
pub const PINNED_MODULE_VERSION: &str = "3.1.0";
/// The certificate of the pinned module, as linked (static).
pub const PINNED_CERTIFICATE: u32 = 5314;

/// How the module is linked into the relay. A CMVP certificate covers one
/// linkage: AWS-LC's static and dynamic builds have separate certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Built into the `fipsrelay` executable (aws-lc-fips-sys' bundled build).
    Static,
    /// Loaded from a shared library (a system AWS-LC install).
    Dynamic,
    /// The dynamic loader could not say: never validated (fails closed).
    Unknown,
}

impl Linkage {
    pub fn name(self) -> &'static str {
        match self {
            Linkage::Static => "static",
            Linkage::Dynamic => "dynamic",
            Linkage::Unknown => "unknown linkage",
        }
    }
}

/// What the CMVP says of a module version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleStatus {
    /// FIPS 140-3 validated, under this certificate number.
    Validated { certificate: u32 },
    /// Tested by a lab and submitted: on the CMVP "Modules In Process" list.
    InProcess,
    /// Not in [`MODULE_TABLE`]: nothing known, treated as not validated.
    Unknown,
}

impl ModuleStatus {
    /// The `status` label of `fipsrelay_fips_module_info` and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            ModuleStatus::Validated { .. } => "validated",
            ModuleStatus::InProcess => "in_process",
            ModuleStatus::Unknown => "unknown",
        }
    }

    pub fn certificate(self) -> Option<u32> {
        match self {
            ModuleStatus::Validated { certificate } => Some(certificate),
            _ => None,
        }
    }
}

/// One row of [`MODULE_TABLE`]: library versions `from..=to` of a FIPS
/// release line, in one linkage.
#[derive(Debug, Clone, Copy)]
pub struct ModuleEntry {
    /// The FIPS branch: 3 is AWS-LC-FIPS 3.x.
    pub line: u32,
    /// The lowest library version the row covers.
    pub from: (u32, u32, u32),
    /// The highest library version the row covers.
    pub to: (u32, u32, u32),
    pub linkage: Linkage,
    pub status: ModuleStatus,
}

/// Every AWS-LC FIPS module this build knows, with its CMVP status.
///
/// Sources (checked 2026-12-01): aws-lc `crypto/fipsmodule/FIPS.md`
/// ("AWS-LC-FIPS v3.1 (static library): certificate #5314", "(dynamic
/// library): certificate #5298"; v4.0 static and dynamic under "Modules in
/// Process"); aws-lc PR 3382 ("the v3 certificates validate AWS-LC FIPS 3.1.0,
/// not 3.0.0. Both final policies are explicit that the validated version is
/// 3.1.0"); the aws-lc-rs v1.18.0 release notes (4.x is in process).
/// Only the version the security policies name is marked validated: 3.1.0.
/// Later 3.x releases (3.3.0 in aws-lc-fips-sys 0.13.13 up to 3.6.0 in 0.13.17)
/// carry fixes but are not named by the policies, so they are unknown here,
/// as are 3.0.x, 2.x, 5.x and non-FIPS builds. When the CMVP names another
/// module version, add its row here with the certificate number, and change
/// the pins (docs/security.md#building-on-another-module).
pub const MODULE_TABLE: &[ModuleEntry] = &[
    ModuleEntry {
        line: 3,
        from: (3, 1, 0),
        to: (3, 1, 0),
        linkage: Linkage::Static,
        status: ModuleStatus::Validated { certificate: 5314 },
    },
    ModuleEntry {
        line: 3,
        from: (3, 1, 0),
        to: (3, 1, 0),
        linkage: Linkage::Dynamic,
        status: ModuleStatus::Validated { certificate: 5298 },
    },
    ModuleEntry {
        line: 4,
        from: (4, 0, 0),
        to: (4, u32::MAX, u32::MAX),
        linkage: Linkage::Static,
        status: ModuleStatus::InProcess,
    },
    ModuleEntry {
        line: 4,
        from: (4, 0, 0),
        to: (4, u32::MAX, u32::MAX),
        linkage: Linkage::Dynamic,
        status: ModuleStatus::InProcess,
    },
];

/// The module this process runs, as read from the linked library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FipsModule {
    /// AWS-LC's own version string, e.g. "AWS-LC FIPS 3.1.0".
    pub full: String,
    /// The library version, e.g. "3.1.0".
    pub version: String,
    pub linkage: Linkage,
    pub status: ModuleStatus,
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let v = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    it.next().is_none().then_some(v)
}

/// The table's word on `version` (e.g. "3.1.0") in `linkage`. A build that
/// is not a FIPS build (`fips_build == false`) is always unknown.
pub fn lookup(version: &str, linkage: Linkage, fips_build: bool) -> ModuleStatus {
    let Some(v) = parse_version(version).filter(|_| fips_build) else { return ModuleStatus::Unknown };
    MODULE_TABLE
        .iter()
        .filter(|e| e.line == v.0 && e.linkage == linkage && v >= e.from && v <= e.to)
        .max_by_key(|e| e.from)
        .map_or(ModuleStatus::Unknown, |e| e.status)
}

impl FipsModule {
    /// Builds the record from what the library says of itself.
    pub fn from_parts(full: &str, linkage: Linkage) -> FipsModule {
        let version = full.rsplit_once(' ').map_or(full, |(_, v)| v).to_string();
        let fips_build = full.starts_with("AWS-LC FIPS ");
        let status = lookup(&version, linkage, fips_build);
        FipsModule { full: full.to_string(), version, linkage, status }
    }

    pub fn is_validated(&self) -> bool {
        matches!(self.status, ModuleStatus::Validated { .. })
    }

    /// The `certificate` label: the number, or "none".
    pub fn certificate_label(&self) -> String {
        self.status.certificate().map_or_else(|| "none".to_string(), |c| c.to_string())
    }
}

impl std::fmt::Display for FipsModule {
    /// "AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}, ", self.full, self.linkage.name())?;
        match self.status {
            ModuleStatus::Validated { certificate } => write!(f, "FIPS 140-3 certificate #{certificate}, validated"),
            ModuleStatus::InProcess => f.write_str("CMVP modules in process, NOT validated"),
            ModuleStatus::Unknown => f.write_str("not a known CMVP-validated module"),
        }
    }
}

/// Where the module's code lives: in this executable, or in a shared library.
/// Decided at run time from the loader's list of loaded objects
/// (`dl_iterate_phdr`): the object whose loaded segments hold the module's
/// `FIPS_mode`, against the one that holds a function of the relay's own.
/// The list exists in a fully static executable too (glibc and musl: the
/// executable alone), where `dladdr` knows nothing.
fn linked_linkage() -> Linkage {
    let module = object_base(aws_lc_fips_sys::FIPS_mode as *const () as usize);
    let ours = object_base(linked_linkage as *const () as usize);
    match (module, ours) {
        (Some(m), Some(o)) if m == o => Linkage::Static,
        (Some(_), Some(_)) => Linkage::Dynamic,
        _ => Linkage::Unknown,
    }
}

/// The load address of the object (executable or shared library) whose
/// `PT_LOAD` segments hold `addr`, or None if none does.
fn object_base(addr: usize) -> Option<usize> {
    struct Search {
        addr: usize,
        base: Option<usize>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `info` for this call, whose
        // `dlpi_phdr` points at `dlpi_phnum` program headers, and `data` is
        // the `Search` that `object_base` handed it.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        let headers: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let base = info.dlpi_addr as usize;
        let holds = headers.iter().any(|h| {
            let start = base.wrapping_add(h.p_vaddr as usize);
            h.p_type == libc::PT_LOAD && (start..start.wrapping_add(h.p_memsz as usize)).contains(&search.addr)
        });
        if holds {
            search.base = Some(base);
            return 1;
        }
        0
    }
    let mut search = Search { addr, base: None };
    // SAFETY: `visit` only reads the loader's entries and writes `search`,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut libc::c_void) };
    search.base
}

/// The module linked into this process, read from aws-lc at run time.
pub fn linked_module() -> FipsModule {
    // The module's own version string, from inside its boundary: "AWS-LC FIPS
    // 3.1.0" in a FIPS build, "AWS-LC 1.x" otherwise.
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let full = unsafe { std::ffi::CStr::from_ptr(aws_lc_fips_sys::awslc_version_string()) };
    let mut module = FipsModule::from_parts(&full.to_string_lossy(), linked_linkage());
    if aws_lc_rs::try_fips_mode().is_err() {
        // A FIPS build whose self-tests or mode check failed is no module at all.
        module.status = ModuleStatus::Unknown;
    }
    module
}

/// The module, described for `version`, the start line and the status page.
pub fn module_description() -> String {
    linked_module().to_string()
}

/// What `run` may do with `module`: go on (validated), go on with a warning
/// (`allow_unvalidated`), or refuse to start.
pub fn admit(module: &FipsModule, allow_unvalidated: bool) -> Result<Admission, CryptoError> {
    match (module.is_validated(), allow_unvalidated) {
        (true, _) => Ok(Admission::Validated),
        (false, true) => Ok(Admission::AllowedUnvalidated),
        (false, false) => Err(CryptoError::UnvalidatedModule { module: module.to_string() }),
    }
}

/// The outcome of [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Validated,
    /// Not validated, run anyway because `crypto.allow_unvalidated_module`:
    /// warn at start and every hour.
    AllowedUnvalidated,
}

/// How often the warning about an unvalidated module repeats.
pub const UNVALIDATED_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

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
    let bytes = crate::files::read_bounded(path, crate::files::MAX_CA_BYTES).map_err(|e| err(e.to_string()))?;
    CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))
}

/// Builds the upstream client config: FIPS provider, TLS 1.3 + 1.2, AES-GCM,
/// verification against `trust`, resumption on. Fails unless `fips()` holds.
pub fn client_config(trust: &TrustSource) -> Result<Arc<ClientConfig>, CryptoError> {
    assert_fips_module()?;
    let roots = load_roots(trust)?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(fips_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // After the handshake rustls hands the traffic secrets to the session,
    // which seals and opens records in place with the same FIPS module
    // (upstream::records); rustls keeps tickets and key updates.
    config.enable_secret_extraction = true;
    if !config.fips() {
        return Err(CryptoError::NotFipsConfig);
    }
    Ok(Arc::new(config))
}

/// ALPN protocol id of HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// `config` (from [`client_config`]) offering `alpn`, in order of
/// preference, in its ClientHello; empty offers none (the intake then
/// speaks HTTP/1.1). Everything else, FIPS included, stays as built.
pub fn with_alpn(config: &Arc<ClientConfig>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = (**config).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    debug_assert!(c.fips());
    Arc::new(c)
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

    /// The module read at run time from aws-lc is the pinned one, built in
    /// statically, and the table marks it validated. Fails when a dependency
    /// change (or a system AWS-LC picked up by the build) moves the module.
    #[test]
    fn linked_module_is_the_pinned_validated_one() {
        let m = linked_module();
        assert_eq!(m.full, format!("AWS-LC FIPS {PINNED_MODULE_VERSION}"), "{m}");
        assert_eq!(m.linkage, Linkage::Static, "{m}");
        assert_eq!(m.status, ModuleStatus::Validated { certificate: PINNED_CERTIFICATE }, "{m}");
        assert!(m.is_validated());
        assert_eq!(admit(&m, false).unwrap(), Admission::Validated);
        assert_eq!(
            m.to_string(),
            format!("AWS-LC FIPS {PINNED_MODULE_VERSION} static, FIPS 140-3 certificate #5314, validated")
        );
        // The compile-time pin of the sys crate agrees with the run-time read.
        let header = std::str::from_utf8(aws_lc_fips_sys::AWSLC_VERSION_NUMBER_STRING).unwrap();
        assert_eq!(header.trim_end_matches('\0'), PINNED_MODULE_VERSION);
        assert!(PINNED_CRATE.starts_with("aws-lc-fips-sys "));
    }

    #[test]
    fn table_lookup() {
        use ModuleStatus::*;
        assert_eq!(lookup("3.1.0", Linkage::Static, true), Validated { certificate: 5314 });
        assert_eq!(lookup("3.1.0", Linkage::Dynamic, true), Validated { certificate: 5298 });
        assert_eq!(lookup("3.1", Linkage::Static, true), Validated { certificate: 5314 });
        // The v3 certificates' policies name 3.1.0: not 3.0.x, not later 3.x.
        assert_eq!(lookup("3.0.9", Linkage::Static, true), Unknown);
        assert_eq!(lookup("3.1.1", Linkage::Static, true), Unknown);
        assert_eq!(lookup("3.6.0", Linkage::Static, true), Unknown);
        assert_eq!(lookup("4.2.0", Linkage::Static, true), InProcess);
        assert_eq!(lookup("2.0.17", Linkage::Static, true), Unknown);
        assert_eq!(lookup("5.1.0", Linkage::Static, true), Unknown);
        assert_eq!(lookup("3.1.0", Linkage::Static, false), Unknown, "a non-FIPS build is never validated");
        assert_eq!(lookup("garbage", Linkage::Static, true), Unknown);
        assert_eq!(lookup("3.6.0.1", Linkage::Static, true), Unknown);
        assert_eq!(lookup("3.1.0", Linkage::Unknown, true), Unknown, "an unknown linkage is never validated");
    }

    #[test]
    fn unvalidated_module_is_refused_unless_allowed() {
        let v4 = FipsModule::from_parts("AWS-LC FIPS 4.2.0", Linkage::Static);
        assert_eq!(v4.status, ModuleStatus::InProcess);
        assert_eq!(v4.certificate_label(), "none");
        let e = admit(&v4, false).unwrap_err().to_string();
        assert!(e.contains("AWS-LC FIPS 4.2.0 static"), "{e}");
        assert!(e.contains("crypto.allow_unvalidated_module = true"), "{e}");
        assert!(e.contains("aws-lc-fips-sys 0.13.11"), "{e}");
        assert_eq!(admit(&v4, true).unwrap(), Admission::AllowedUnvalidated);
        let plain = FipsModule::from_parts("AWS-LC 1.73.0", Linkage::Static);
        assert_eq!(plain.status, ModuleStatus::Unknown);
        assert!(admit(&plain, false).is_err());
        assert_eq!(v4.to_string(), "AWS-LC FIPS 4.2.0 static, CMVP modules in process, NOT validated");
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
