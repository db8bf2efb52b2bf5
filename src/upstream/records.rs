//! TLS application records sealed and opened in place, in the relay's own
//! buffers, by the FIPS module's TLS record AEAD (aws-lc-rs
//! `TlsRecordSealingKey` / `TlsRecordOpeningKey`, AES-GCM only), with the
//! traffic secrets rustls hands over after the handshake
//! (`dangerous_into_kernel_connection`, the kTLS API). rustls keeps what is
//! not record protection: session tickets and key updates go through its
//! `KernelConnection`.
//!
//! This is the first step of sealing records without copying them (issue
//! #11): the caller reads plaintext straight into a record buffer after
//! [`Sealer::prefix_len`] bytes of room, and [`Sealer::seal`] turns it into
//! a record where it lies; [`Opener::open`] turns a received record into
//! plaintext where it lies. `tls.rs` uses it for every record after the
//! handshake.
//!
//! # Invariants
//! - TLS 1.3: the nonce is `iv XOR sequence number` (RFC 8446 §5.3), sealed
//!   in the module's TLS 1.3 mode, which learns the XOR mask from the first
//!   record, so a sealer starts at sequence number 0 (right after the
//!   handshake or a key update), and refuses any nonce that does not
//!   increase.
//! - TLS 1.2: the nonce is the 4-byte implicit salt and the sequence number
//!   as the explicit part (what OpenSSL sends; rustls XORs it with key
//!   material instead, so our TLS 1.2 records differ from rustls' in those 8
//!   bytes and the ciphertext, and open the same), sealed in the module's
//!   TLS 1.2 mode, which refuses an explicit nonce that does not increase.
//! - A key seals at most its confidentiality limit of records
//!   ([`RecordError::LimitReached`]: update the key first).
//! - The IVs are zeroed on drop; the keys live inside the module.

use std::ops::Range;

use aws_lc_rs::aead::{self, Aad, Nonce, TlsProtocolId, TlsRecordOpeningKey, TlsRecordSealingKey};
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// Record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM explicit nonce, after the header.
pub const EXPLICIT_NONCE_LEN: usize = 8;
/// Largest plaintext of one record.
pub const MAX_FRAGMENT: usize = 16 * 1024;
/// Largest ciphertext of one record we accept (RFC 8446 §5.2: 2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;

pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the in-place record layer supports AES-GCM only")]
    UnsupportedCipher,
    #[error("the FIPS module refused to seal the record (a sequence number that does not increase, or a key error)")]
    Seal,
    #[error("a record from the peer failed authentication")]
    Open,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("the key reached its confidentiality limit of {0} records: update the key first")]
    LimitReached(u64),
    #[error("a TLS 1.3 sealer starts at sequence number 0, not {0} (the module learns its nonce mask from the first record)")]
    NotAtStart(u64),
}

fn algorithm_and_parts(
    secrets: &ConnectionTrafficSecrets,
) -> Result<(&'static aead::Algorithm, &[u8], [u8; 12]), RecordError> {
    let (alg, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key.as_ref(), iv.as_ref()),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key.as_ref(), iv.as_ref()),
        _ => return Err(RecordError::UnsupportedCipher),
    };
    let iv: [u8; 12] = iv.try_into().map_err(|_| RecordError::UnsupportedCipher)?;
    Ok((alg, key, iv))
}

/// `iv XOR seq` (seq big-endian in the last 8 bytes).
fn nonce_bytes(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

/// TLS 1.2 additional data: seq, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9..11].copy_from_slice(&[3, 3]);
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

fn header(typ: u8, len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u16).to_be_bytes();
    [typ, 3, 3, l[0], l[1]]
}

/// Seals records to the peer, one sequence number each.
pub struct Sealer {
    key: TlsRecordSealingKey,
    iv: [u8; 12],
    seq: u64,
    version: RecordVersion,
    limit: u64,
}

impl Sealer {
    /// From the transmit half of rustls' extracted secrets: `(seq, secrets)`;
    /// `limit` is the suite's confidentiality limit (records per key).
    pub fn new(
        version: RecordVersion,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
        limit: u64,
    ) -> Result<Sealer, RecordError> {
        let (alg, key, iv) = algorithm_and_parts(&secrets)?;
        let id = match version {
            RecordVersion::Tls13 if seq != 0 => return Err(RecordError::NotAtStart(seq)),
            RecordVersion::Tls13 => TlsProtocolId::TLS13,
            RecordVersion::Tls12 => TlsProtocolId::TLS12,
        };
        let key = TlsRecordSealingKey::new(alg, id, key).map_err(|_| RecordError::UnsupportedCipher)?;
        let mut limit = limit;
        if version == RecordVersion::Tls12 {
            // rustls sealed the Finished (sequence 0) under this key with the
            // explicit nonce iv[4..] XOR 0. Our explicit nonces are the
            // sequence numbers: stop before they could reach that value.
            let finished = u64::from_be_bytes(iv[4..].try_into().expect("8 bytes"));
            if (seq..limit).contains(&finished) {
                limit = finished;
            }
        }
        Ok(Sealer { key, iv, seq, version, limit })
    }

    /// Bytes to leave before the plaintext: the header, and for TLS 1.2 the explicit nonce.
    pub fn prefix_len(&self) -> usize {
        match self.version {
            RecordVersion::Tls13 => HEADER_LEN,
            RecordVersion::Tls12 => HEADER_LEN + EXPLICIT_NONCE_LEN,
        }
    }

    /// What a record adds to its plaintext in all.
    pub fn overhead(&self) -> usize {
        self.prefix_len() + TAG_LEN + usize::from(self.version == RecordVersion::Tls13)
    }

    /// The next record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records left before the key must be updated.
    pub fn records_left(&self) -> u64 {
        self.limit.saturating_sub(self.seq)
    }

    /// What a record adds after its plaintext: the inner type (TLS 1.3)
    /// and the tag.
    pub fn suffix_len(&self) -> usize {
        self.overhead() - self.prefix_len()
    }

    /// Seals `buf[start + prefix_len()..]` (at most [`MAX_FRAGMENT`] bytes
    /// of plaintext of type `typ`) into one record at `buf[start..]`, in
    /// place: the header (and explicit nonce) go into the room left before
    /// the plaintext, the inner type (TLS 1.3) and the tag are appended.
    /// Returns the record's length. On error `buf` is left as it was.
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize, typ: u8) -> Result<usize, RecordError> {
        let end = buf.len();
        if end < start + self.prefix_len() {
            return Err(RecordError::Malformed("no room for the record header"));
        }
        buf.resize(end + self.suffix_len(), 0);
        match self.seal_record(&mut buf[start..], typ) {
            Ok(n) => Ok(n),
            Err(e) => {
                buf.truncate(end);
                Err(e)
            }
        }
    }

    /// Seals one record laid out in `record`: [`Self::prefix_len`] bytes of
    /// room, the plaintext (at most [`MAX_FRAGMENT`] bytes of type `typ`),
    /// then [`Self::suffix_len`] bytes of room, which the header, the inner
    /// type and the tag fill. Several records lent at once are sealed this
    /// way where they lie, one after the other. Returns the record's length
    /// (`record.len()`); on error the plaintext is left as it was.
    pub fn seal_record(&mut self, record: &mut [u8], typ: u8) -> Result<usize, RecordError> {
        let (prefix, suffix) = (self.prefix_len(), self.suffix_len());
        let plain =
            record.len().checked_sub(prefix + suffix).ok_or(RecordError::Malformed("no room for the record"))?;
        if plain > MAX_FRAGMENT {
            return Err(RecordError::Malformed("plaintext longer than one record"));
        }
        if self.seq >= self.limit {
            return Err(RecordError::LimitReached(self.limit));
        }
        let record_len = record.len();
        let (outer, nonce, aad_bytes, sealed_end) = match self.version {
            RecordVersion::Tls13 => {
                record[prefix + plain] = typ;
                let aad = header(CONTENT_APPLICATION_DATA, record_len - HEADER_LEN);
                let mut a = [0u8; 13];
                a[..HEADER_LEN].copy_from_slice(&aad);
                (CONTENT_APPLICATION_DATA, nonce_bytes(&self.iv, self.seq), (a, HEADER_LEN), prefix + plain + 1)
            }
            RecordVersion::Tls12 => {
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&self.iv[..4]);
                n[4..].copy_from_slice(&self.seq.to_be_bytes());
                (typ, n, (tls12_aad(self.seq, typ, plain), 13), prefix + plain)
            }
        };
        let aad = Aad::from(&aad_bytes.0[..aad_bytes.1]);
        let sealed = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            aad,
            &mut record[prefix..sealed_end],
        );
        let tag = sealed.map_err(|_| RecordError::Seal)?;
        record[sealed_end..sealed_end + TAG_LEN].copy_from_slice(tag.as_ref());
        record[..HEADER_LEN].copy_from_slice(&header(outer, record_len - HEADER_LEN));
        if self.version == RecordVersion::Tls12 {
            record[HEADER_LEN..HEADER_LEN + EXPLICIT_NONCE_LEN].copy_from_slice(&nonce[4..]);
        }
        self.seq += 1;
        Ok(record_len)
    }

    #[cfg(test)]
    fn set_seq_for_test(&mut self, seq: u64) {
        self.seq = seq;
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

/// Opens records from the peer, one sequence number each.
pub struct Opener {
    key: TlsRecordOpeningKey,
    iv: [u8; 12],
    seq: u64,
    version: RecordVersion,
}

/// The length of the record at the front of `buf`, once its header is
/// there (the caller waits for that many bytes).
pub fn record_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER_LEN).then(|| HEADER_LEN + usize::from(u16::from_be_bytes([buf[3], buf[4]])))
}

impl Opener {
    /// From the receive half of rustls' extracted secrets.
    pub fn new(version: RecordVersion, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Opener, RecordError> {
        let (alg, key, iv) = algorithm_and_parts(&secrets)?;
        let id = match version {
            RecordVersion::Tls13 => TlsProtocolId::TLS13,
            RecordVersion::Tls12 => TlsProtocolId::TLS12,
        };
        let key = TlsRecordOpeningKey::new(alg, id, key).map_err(|_| RecordError::UnsupportedCipher)?;
        Ok(Opener { key, iv, seq, version })
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Opens the one whole record in `record` (header included) in place.
    /// Returns its content type and where its plaintext now lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), RecordError> {
        if record.len() < HEADER_LEN || record_len(record) != Some(record.len()) {
            return Err(RecordError::Malformed("not one whole record"));
        }
        if record.len() - HEADER_LEN > MAX_CIPHERTEXT {
            return Err(RecordError::Malformed("record longer than 2^14 + 256"));
        }
        let outer = record[0];
        let hdr: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("checked length");
        let (typ, range) = match self.version {
            RecordVersion::Tls13 => {
                if outer != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::Malformed(
                        "a TLS 1.3 record after the handshake must be application_data",
                    ));
                }
                let nonce = Nonce::assume_unique_for_key(nonce_bytes(&self.iv, self.seq));
                let plain = self
                    .key
                    .open_in_place(nonce, Aad::from(hdr), &mut record[HEADER_LEN..])
                    .map_err(|_| RecordError::Open)?;
                // Strip the padding; the last non-zero byte is the inner type.
                let end = plain.iter().rposition(|b| *b != 0).ok_or(RecordError::Malformed("no inner content type"))?;
                let typ = plain[end];
                if end > MAX_FRAGMENT {
                    return Err(RecordError::Malformed("plaintext longer than one record"));
                }
                (typ, HEADER_LEN..HEADER_LEN + end)
            }
            RecordVersion::Tls12 => {
                let body = HEADER_LEN + EXPLICIT_NONCE_LEN;
                if record.len() < body + TAG_LEN {
                    return Err(RecordError::Malformed("record shorter than its nonce and tag"));
                }
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&self.iv[..4]);
                n[4..].copy_from_slice(&record[HEADER_LEN..body]);
                let plain_len = record.len() - body - TAG_LEN;
                let aad = tls12_aad(self.seq, outer, plain_len);
                let plain = self
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut record[body..])
                    .map_err(|_| RecordError::Open)?;
                if plain.len() > MAX_FRAGMENT {
                    return Err(RecordError::Malformed("plaintext longer than one record"));
                }
                (outer, body..body + plain.len())
            }
        };
        self.seq += 1;
        Ok((typ, range))
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

/// The confidentiality limit (records per key) of a negotiated suite.
pub fn confidentiality_limit(suite: rustls::SupportedCipherSuite) -> u64 {
    match suite {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    }
}

#[cfg(test)]
mod tests {
    //! Against rustls' own record layer, in memory: for the same keys and
    //! sequence numbers, the same record bytes; and records each side seals
    //! are opened by the other.
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConnection, ServerConnection};

    struct Pair {
        client: ClientConnection,
        server: ServerConnection,
    }

    fn transfer(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> usize {
        let mut buf = Vec::new();
        from(&mut buf);
        if !buf.is_empty() {
            to(&buf);
        }
        buf.len()
    }

    fn pair(version: &'static rustls::SupportedProtocolVersion, suite: rustls::CipherSuite) -> Pair {
        let pki = loadgen::pki::TestPki::generate(&[]);
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile_certs(&pki.leaf_cert_pem)
            .into_iter()
            .chain(rustls_pemfile_certs(&pki.ca_cert_pem))
            .collect();
        let key = {
            use rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap()
        };
        let mut provider = crate::crypto::fips_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let provider = Arc::new(provider);
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&pki.ca_cert_pem) {
            roots.add(c).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        let name = ServerName::try_from("metrics.agent.ddog-gov.com").unwrap();
        let mut p = Pair {
            client: ClientConnection::new(Arc::new(client), name).unwrap(),
            server: ServerConnection::new(Arc::new(server)).unwrap(),
        };
        for _ in 0..10 {
            let Pair { client, server } = &mut p;
            let a = transfer(
                &mut |b| {
                    while client.wants_write() {
                        client.write_tls(b).unwrap();
                    }
                },
                &mut |b| {
                    server.read_tls(&mut &b[..]).unwrap();
                    server.process_new_packets().unwrap();
                },
            );
            let c = transfer(
                &mut |b| {
                    while server.wants_write() {
                        server.write_tls(b).unwrap();
                    }
                },
                &mut |b| {
                    let mut rest = b;
                    while !rest.is_empty() {
                        client.read_tls(&mut rest).unwrap();
                        client.process_new_packets().unwrap();
                    }
                },
            );
            if a == 0 && c == 0 && !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!p.client.is_handshaking() && !p.server.is_handshaking());
        p
    }

    fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
    }

    fn version_of(v: &'static rustls::SupportedProtocolVersion) -> RecordVersion {
        if v.version == rustls::ProtocolVersion::TLSv1_3 {
            RecordVersion::Tls13
        } else {
            RecordVersion::Tls12
        }
    }

    /// The suites the FIPS provider offers, per version.
    fn cases() -> Vec<(&'static rustls::SupportedProtocolVersion, rustls::CipherSuite)> {
        use rustls::CipherSuite::*;
        vec![
            (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256),
            (&rustls::version::TLS13, TLS13_AES_256_GCM_SHA384),
            (&rustls::version::TLS12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            (&rustls::version::TLS12, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ]
    }

    /// Drives rustls' `client` to seal `plain` and returns its records.
    fn rustls_records(client: &mut ClientConnection, plain: &[u8]) -> Vec<u8> {
        client.writer().write_all(plain).unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    #[test]
    #[allow(deprecated)]
    fn tls13_records_are_rustls_records_byte_for_byte() {
        for (version, suite) in cases().into_iter().filter(|(v, _)| version_of(v) == RecordVersion::Tls13) {
            let what = format!("{suite:?}");
            let Pair { mut client, server } = pair(version, suite);
            let limit = confidentiality_limit(server.negotiated_cipher_suite().unwrap());
            // The server's receive keys are the client's transmit keys.
            let secrets = server.dangerous_extract_secrets().unwrap();
            assert_eq!(secrets.rx.0, 0, "no application record from the client yet");
            let mut ours = Sealer::new(RecordVersion::Tls13, secrets.rx, limit).unwrap();
            for (i, len) in [1usize, 700, MAX_FRAGMENT].into_iter().enumerate() {
                let plain: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
                let theirs = rustls_records(&mut client, &plain);
                let mut buf = vec![0u8; ours.prefix_len()];
                buf.extend_from_slice(&plain);
                let n = ours.seal(&mut buf, 0, CONTENT_APPLICATION_DATA).unwrap();
                assert_eq!((n, n), (buf.len(), plain.len() + ours.overhead()), "{what}");
                assert_eq!(buf, theirs, "{what}: {len} bytes, the same record");
            }
            assert_eq!(ours.seq(), 3);
        }
    }

    #[test]
    #[allow(deprecated)]
    fn records_we_seal_and_open_interoperate_with_rustls_on_both_versions() {
        for (version, suite) in cases() {
            let what = format!("{suite:?}");
            let v = version_of(version);
            let Pair { client, mut server } = pair(version, suite);
            let limit = confidentiality_limit(client.negotiated_cipher_suite().unwrap());
            // We take the client's place right after the handshake, as the relay will.
            let secrets = client.dangerous_extract_secrets().unwrap();
            let mut sealer = Sealer::new(v, secrets.tx, limit).unwrap();
            let mut opener = Opener::new(v, secrets.rx).unwrap();
            let mut wire = Vec::new();
            let request = b"POST /api/v2/series HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".to_vec();
            for chunk in request.chunks(20) {
                // The plaintext is read straight into the record buffer.
                let start = wire.len();
                wire.resize(start + sealer.prefix_len(), 0);
                wire.extend_from_slice(chunk);
                sealer.seal(&mut wire, start, CONTENT_APPLICATION_DATA).unwrap();
            }
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut got = Vec::new();
            let _ = server.reader().read_to_end(&mut got);
            assert_eq!(got, request, "{what}: rustls opens what we sealed");

            // The server's answer, possibly after session tickets (TLS 1.3):
            // we open every record; rustls' tickets are handshake records.
            server.writer().write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}").unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut answer = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let len = record_len(&wire[at..]).unwrap();
                let (typ, range) = opener.open(&mut wire[at..at + len]).unwrap();
                match typ {
                    CONTENT_APPLICATION_DATA => answer.extend_from_slice(&wire[at + range.start..at + range.end]),
                    CONTENT_HANDSHAKE => {
                        assert_eq!(v, RecordVersion::Tls13, "{what}: only TLS 1.3 sends tickets after the handshake")
                    }
                    other => panic!("{what}: record type {other}"),
                }
                at += len;
            }
            assert_eq!(answer, b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}", "{what}");
        }
    }

    #[test]
    #[allow(deprecated)]
    fn opened_records_match_what_rustls_sealed_and_tampering_fails() {
        for (version, suite) in cases() {
            let what = format!("{suite:?}");
            let v = version_of(version);
            let Pair { mut client, server } = pair(version, suite);
            let secrets = server.dangerous_extract_secrets().unwrap();
            let mut opener = Opener::new(v, secrets.rx).unwrap();
            let plain = b"POST /api/v2/series HTTP/1.1\r\nhost: metrics.agent.ddog-gov.com\r\n\r\n".to_vec();
            client.writer().write_all(&plain).unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let len = record_len(&wire).unwrap();
            assert_eq!(len, wire.len(), "{what}: one record");
            let mut tampered = wire.clone();
            *tampered.last_mut().unwrap() ^= 1;
            let mut record = wire.clone();
            let (typ, range) = opener.open(&mut record).unwrap();
            assert_eq!((typ, &record[range]), (CONTENT_APPLICATION_DATA, &plain[..]), "{what}");
            // The next sequence number: the same record again does not open,
            // and neither does a changed one.
            let mut again = wire.clone();
            assert_eq!(opener.open(&mut again), Err(RecordError::Open), "{what}: a replayed record");
            assert_eq!(opener.open(&mut tampered), Err(RecordError::Open), "{what}");
            assert!(matches!(opener.open(&mut wire[..len - 1].to_vec()), Err(RecordError::Malformed(_))));
        }
    }

    #[test]
    fn tls12_sealer_stops_before_the_nonce_rustls_used_for_finished() {
        // iv[4..] = 5: rustls sealed the Finished with explicit nonce 5.
        let mut iv = [0u8; 12];
        iv[11] = 5;
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([9u8; 32]),
            iv: rustls::crypto::cipher::Iv::from(iv),
        };
        let s = Sealer::new(RecordVersion::Tls12, (1, secrets), 1 << 24).unwrap();
        assert_eq!(s.records_left(), 4, "sequence numbers 1..=4 only, never 5");
    }

    #[test]
    #[allow(deprecated)]
    fn a_repeated_sequence_number_is_refused_by_the_module_and_the_limit_holds() {
        let Pair { server, .. } = pair(&rustls::version::TLS13, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let secrets = server.dangerous_extract_secrets().unwrap();
        let dummy = ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::from([7u8; 12]),
        };
        assert_eq!(Sealer::new(RecordVersion::Tls13, (1, dummy), 3).err(), Some(RecordError::NotAtStart(1)));
        let mut s = Sealer::new(RecordVersion::Tls13, (0, secrets.tx.1), 3).unwrap();
        let record = |s: &mut Sealer| {
            let mut b = vec![0u8; HEADER_LEN];
            b.extend_from_slice(b"x");
            s.seal(&mut b, 0, CONTENT_APPLICATION_DATA).map(|_| b)
        };
        let start = s.seq();
        record(&mut s).unwrap();
        // Back to the same sequence number: the FIPS module refuses the nonce.
        s.set_seq_for_test(start);
        assert_eq!(record(&mut s).err(), Some(RecordError::Seal));
        s.set_seq_for_test(start + 1);
        record(&mut s).unwrap();
        s.set_seq_for_test(3);
        assert_eq!(s.records_left(), 0);
        assert_eq!(record(&mut s).err(), Some(RecordError::LimitReached(3)));

        // TLS 1.2: the module's TLS 1.2 mode refuses an explicit nonce that
        // does not increase.
        let Pair { client, .. } =
            pair(&rustls::version::TLS12, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        let secrets = client.dangerous_extract_secrets().unwrap();
        let first = secrets.tx.0;
        let mut s = Sealer::new(RecordVersion::Tls12, secrets.tx, u64::MAX).unwrap();
        let record = |s: &mut Sealer| {
            let mut b = vec![0u8; HEADER_LEN + EXPLICIT_NONCE_LEN];
            b.extend_from_slice(b"x");
            s.seal(&mut b, 0, CONTENT_APPLICATION_DATA).map(|_| b)
        };
        let r = record(&mut s).unwrap();
        assert_eq!(
            &r[HEADER_LEN..HEADER_LEN + EXPLICIT_NONCE_LEN],
            &first.to_be_bytes(),
            "the explicit nonce is the sequence number"
        );
        s.set_seq_for_test(first);
        assert_eq!(record(&mut s).err(), Some(RecordError::Seal));
    }
}
