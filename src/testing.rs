//! Test helpers for unit tests over the in-memory backend: a PKI with the
//! FIPS provider on both sides, and a TLS intake that runs in memory.

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

use crate::io::mem::{MemListener, MemStream};
use crate::io::{Listener, Stream};

/// A client config trusting a fresh CA, and a server config with a leaf
/// for the intake names. The directory holds the CA file.
pub fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>, tempfile::TempDir) {
    let pki = loadgen::pki::TestPki::generate(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let client = crate::crypto::client_config(&crate::crypto::TrustSource::CaFile(ca)).unwrap();
    let certs =
        rustls::pki_types::CertificateDer::pem_slice_iter(pki.leaf_cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(crate::crypto::fips_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (client, Arc::new(server), dir)
}

async fn send_tls(io: &mut MemStream, conn: &mut rustls::ServerConnection) -> bool {
    while conn.wants_write() {
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        if io.write_all(out).await.0.is_err() {
            return false;
        }
    }
    true
}

/// What the intake does with a complete request's plaintext: the bytes to
/// answer, or `None` to wait for more.
pub type Answer = dyn Fn(&[u8]) -> Option<Vec<u8>>;

/// Serves one TLS connection: gathers plaintext until `answer` can answer
/// it, sends the answer, and after `exchanges` answers sends close_notify
/// and goes away (FIN).
pub async fn serve_tls(mut io: MemStream, config: Arc<rustls::ServerConfig>, exchanges: usize, answer: Rc<Answer>) {
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    let mut done = 0;
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut request = Vec::new();
    loop {
        if !send_tls(&mut io, &mut conn).await {
            return;
        }
        if done == exchanges {
            conn.send_close_notify();
            send_tls(&mut io, &mut conn).await;
            return;
        }
        buf.clear();
        let (res, b) = io.read(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
        // read_tls takes at most a bounded amount per call: feed it all.
        let mut input = &buf[..];
        while !input.is_empty() {
            conn.read_tls(&mut input).unwrap();
            conn.process_new_packets().unwrap();
            let mut plain = [0u8; 16 * 1024];
            while let Ok(n) = conn.reader().read(&mut plain) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&plain[..n]);
            }
        }
        if request.is_empty() {
            continue;
        }
        if let Some(out) = answer(&request) {
            conn.writer().write_all(&out).unwrap();
            request.clear();
            done += 1;
        }
    }
}

/// Accepts on `listener` forever; the first connection serves
/// `first_exchanges` answers and closes, the others many. Counts the
/// connections in `accepted`.
pub async fn intake(
    listener: MemListener,
    config: Arc<rustls::ServerConfig>,
    first_exchanges: usize,
    accepted: Rc<Cell<usize>>,
    answer: Rc<Answer>,
) {
    loop {
        let (io, _) = listener.accept().await.unwrap();
        let exchanges = if accepted.get() == 0 { first_exchanges } else { 1000 };
        accepted.set(accepted.get() + 1);
        crate::rt::spawn(serve_tls(io, config.clone(), exchanges, answer.clone()));
    }
}

/// An HTTP/1.1 answer for a complete request (head and Content-Length body).
pub fn http_202(request: &[u8]) -> Option<Vec<u8>> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&request[..end]).ok()?;
    let len: usize = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    if request.len() < end + len {
        return None;
    }
    let body = format!("{{\"bytes\":{len}}}");
    Some(format!("HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
}
