//! The mock intake over HTTP/2 (ALPN h2), through the `h2` crate: each
//! stream is one request, read, hashed and recorded as over HTTP/1.1, and
//! answered with the same behaviour. Request-level faults map to their
//! HTTP/2 shapes: a reset is RST_STREAM, a cut answer is a reset after the
//! head (or after part of the body).

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::request::HashSink;
use super::{Fault, RequestRecord, Shared, DIGEST_PATH, MISSING_ANSWER_BYTES, RESET_PATH, STATS_PATH};
use crate::hash::BodyHasher;

/// Serves one HTTP/2 connection until the client closes it, with the
/// connection-level faults ([`Fault::GoAway`], [`Fault::GoAwayAbrupt`],
/// [`Fault::RefuseFirstStream`], [`Fault::Freeze`]) applied here.
pub(super) async fn serve(tls: TlsStream<TcpStream>, shared: Arc<Shared>, sni: Option<String>, id: u64) {
    let mut builder = h2::server::Builder::new();
    if let Some(n) = shared.h2_max_streams {
        builder.max_concurrent_streams(n);
    }
    if let Some(w) = shared.h2_windows.0 {
        builder.initial_window_size(w);
    }
    if let Some(w) = shared.h2_windows.1 {
        builder.initial_connection_window_size(w);
    }
    let Ok(mut conn) = builder.handshake(tls).await else { return };
    let mut streams = 0u32;
    // Freeze: the first answer's handler says when it is sent.
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut freezing = false;
    loop {
        let accepted = tokio::select! {
            a = conn.accept() => a,
            _ = answered.recv(), if freezing => None,
        };
        if freezing && accepted.is_none() {
            // Flush the answer, then go silent.
            let flush = std::future::poll_fn(|cx| conn.poll_closed(cx));
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), flush).await;
            tokio::time::sleep(super::BLACKHOLE_HOLD).await;
            return;
        }
        let Some(Ok((req, mut respond))) = accepted else { return };
        let control = matches!(req.uri().path(), STATS_PATH | DIGEST_PATH | RESET_PATH);
        let fault = if control { Fault::None } else { shared.behavior().fault };
        if !control {
            streams += 1;
        }
        match fault {
            Fault::RefuseFirstStream if streams == 1 => {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
            Fault::GoAway(n) if streams == n => conn.graceful_shutdown(),
            Fault::GoAwayAbrupt(n) if streams == n => conn.abrupt_shutdown(h2::Reason::NO_ERROR),
            _ => {}
        }
        let done = (fault == Fault::Freeze && streams == 1).then(|| answered_tx.clone());
        freezing |= done.is_some();
        let shared = shared.clone();
        let sni = sni.clone();
        tokio::spawn(async move {
            let _ = stream(req, respond, &shared, sni, id).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }
}

async fn stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: &Shared,
    sni: Option<String>,
    id: u64,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let control_path = matches!(path.split('?').next(), Some(STATS_PATH | DIGEST_PATH | RESET_PATH));
    let behavior = shared.behavior();
    if behavior.fault == Fault::ResetMidRequest && !control_path {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return Ok(());
    }
    let mut hasher = BodyHasher::new();
    let mut body_len = 0u64;
    {
        let mut sink = HashSink::new(&mut hasher, behavior.fault == Fault::CorruptRecord);
        if let Fault::SlowRead(rate) = behavior.fault {
            if !control_path {
                sink = sink.throttled(rate);
            }
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            sink.update(&chunk);
            sink.pace(chunk.len()).await;
            body_len += chunk.len() as u64;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
    }
    let json = |status: u16, body: String| (status, body);
    let control = match (parts.method.as_str(), path.split('?').next()) {
        ("GET", Some(STATS_PATH)) => Some(json(200, serde_json::to_string(&shared.stats()).unwrap_or_default())),
        ("GET", Some(DIGEST_PATH)) => Some(json(200, serde_json::to_string(&shared.digest()).unwrap_or_default())),
        ("POST", Some(RESET_PATH)) => {
            shared.reset();
            Some(json(200, "{}".into()))
        }
        _ => None,
    };
    if let Some((status, body)) = control {
        return answer(&mut respond, status, body.as_bytes(), body.len(), false).await;
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let record = RequestRecord {
        sni,
        host: parts.uri.authority().map(|a| a.as_str().to_owned()),
        method: parts.method.as_str().to_owned(),
        path,
        body_len,
        body_hash: hasher.finish(),
        headers,
        connection_id: id,
        http2: true,
    };
    shared.record_with(behavior.fault, record);
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    let body = behavior.body.as_bytes();
    match behavior.fault {
        Fault::SlowAnswer(delay) => tokio::time::sleep(delay).await,
        Fault::ResetAfterRequest => {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return Ok(());
        }
        Fault::CloseAfterHead => {
            let mut send = respond.send_response(head(behavior.status, body.len()), false)?;
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            return Ok(());
        }
        Fault::CloseMidAnswer => {
            let mut send = respond.send_response(head(behavior.status, body.len() + MISSING_ANSWER_BYTES), false)?;
            send.send_data(Bytes::copy_from_slice(body), false)?;
            send.send_reset(h2::Reason::INTERNAL_ERROR);
            return Ok(());
        }
        _ => {}
    }
    answer(&mut respond, behavior.status, body, body.len(), parts.method == http::Method::HEAD).await
}

fn head(status: u16, content_length: usize) -> http::Response<()> {
    let mut b = http::Response::builder().status(status).header("content-type", "application/json");
    if status != 204 && status != 304 {
        b = b.header("content-length", content_length);
    }
    b.body(()).expect("a valid answer head")
}

async fn answer(
    respond: &mut h2::server::SendResponse<Bytes>,
    status: u16,
    body: &[u8],
    len: usize,
    head_only: bool,
) -> Result<(), h2::Error> {
    let empty = head_only || body.is_empty() || status == 204 || status == 304;
    let mut send = respond.send_response(head(status, len), empty)?;
    if !empty {
        send.send_data(Bytes::copy_from_slice(body), true)?;
    }
    Ok(())
}
