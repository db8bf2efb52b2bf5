//! The answers the relay gives itself on the status port: the read-only
//! pages (`/`, `/metrics`, `/health`) and the admin API (`/admin/*`, bearer
//! token, commands handed to the control loop).

use std::net::SocketAddr;
use std::time::Instant;

use super::downstream::Downstream;
use super::exchange::BodyProgress;
use super::{drain_body, Outcome, IO_BUF};
use crate::admin::{self, AdminCommand, AdminReply, Route};
use crate::http1::{self, BodyFraming, ClientConn, Method, RequestHead};
use crate::io::{Backend, Stream};
use crate::logging::summary::{About, Event};
use crate::worker::ctx::WorkerCtx;

pub(super) async fn answer_status<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    peer: SocketAddr,
) -> Outcome {
    if admin::is_admin_target(head.target(scratch)) {
        return answer_admin(ctx, down, head, scratch, peer).await;
    }
    let method_ok = matches!(head.method, Method::Get | Method::Head);
    // A body (never used here) is read and dropped, bounded, so the
    // connection can stay; when it cannot be, the connection closes.
    let keep = drain_body(ctx, down, head, &mut BodyProgress::new(head.framing)).await;
    let client = ClientConn { close: !keep, ..head.client() };
    let (status, ctype, body) = if !method_ok {
        (405, "text/plain; charset=utf-8", "the status port is read-only: use GET\n".to_string())
    } else {
        crate::status::render(head.target(scratch), &ctx.info, &ctx.hub)
    };
    scratch.clear();
    scratch.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
            status,
            http1::reason(status),
            ctype,
            body.len(),
            client.connection_field()
        )
        .as_bytes(),
    );
    if head.method != Method::Head {
        scratch.extend_from_slice(body.as_bytes());
    }
    if down.write(scratch).await.is_err() || client.close {
        return Outcome::Close;
    }
    Outcome::KeepAlive
}

/// `/admin/*` on the status port: read the small body, check the bearer
/// token, hand the command to the control loop, answer. The connection
/// stays open after an answer to a request whose body was read to its end
/// (unless the client asked to close, or it was a drain); it closes after a
/// body that could not be read. `scratch` holds the rendered head.
pub(super) async fn answer_admin<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
    scratch: &mut Vec<u8>,
    peer: SocketAddr,
) -> Outcome {
    let access = &ctx.info.admin;
    // Kept open once the body is read; closed when it cannot be.
    let keep = ClientConn { close: head.close || (ctx.draining().is_some() && !ctx.handing_over()), ..head.client() };
    if !admin::peer_allowed(peer.ip(), ctx.config.admin_allow_non_local) {
        let path = String::from_utf8_lossy(head.target(scratch)).split('?').next().unwrap_or_default().to_string();
        tracing::warn!(%peer, route = %path, "admin request refused: not from loopback (admin.allow_non_local = false)");
        let reply = admin::non_local_refused(peer.ip());
        // Its body, if any, is not read: the connection closes.
        let client = if head.framing == BodyFraming::None { keep } else { ClientConn { close: true, ..keep } };
        return send_admin(down, &reply, &[], client, scratch).await;
    }
    let Some(token) = &access.token else {
        let reply = AdminReply::new(
            404,
            "not found: the admin API is off (admin.enabled = false, or no token file could be created at start: see the start log)",
        );
        let client = if head.framing == BodyFraming::None { keep } else { ClientConn { close: true, ..keep } };
        return send_admin(down, &reply, &[], client, scratch).await;
    };
    let req = admin::inspect(scratch, token);
    let body = match read_admin_body(ctx, down, head).await {
        Ok(body) => body,
        Err(reply) => return send_admin(down, &reply, &[], ClientConn { close: true, ..keep }, scratch).await,
    };
    if !req.authorized {
        let what = "admin request refused: missing or wrong bearer token";
        // Per peer address: a misconfigured script is told from a scan.
        let ip = peer.ip().to_string();
        let event = Event { what, product: "status", about: About::Peer(&ip), cause: "unauthorized" };
        crate::count_or_log!(warn, ctx.log, event, || format!("from {peer} for {}", req.path), %peer, route = %req.path, "{what}");
        let reply = AdminReply::new(401, "unauthorized: send Authorization: Bearer <the token in admin.token_file>");
        return send_admin(down, &reply, &[("WWW-Authenticate", "Bearer")], keep, scratch).await;
    }
    let reply = match req.route {
        Route::Drain => {
            let reply = AdminReply::new(
                202,
                format!(
                    "draining: no new connections; requests in flight get up to {:?} (shutdown.drain_timeout), then fipsrelay exits",
                    ctx.config.drain_timeout
                ),
            );
            // The answer goes out first: draining closes this worker's connections.
            send_admin(down, &reply, &[], ClientConn { close: true, ..keep }, scratch).await;
            if access.commands.send(AdminCommand::Drain { peer }).is_err() {
                tracing::warn!(%peer, "admin drain request dropped: the control loop is already stopping");
            }
            return Outcome::Close;
        }
        Route::LogLevel => match String::from_utf8(body) {
            Ok(directive) => {
                admin::ask_control(access, |reply| AdminCommand::SetLogLevel { peer, directive, reply }).await
            }
            Err(_) => AdminReply::new(400, "the log level must be UTF-8 text such as debug or info,fipsrelay=debug"),
        },
        Route::Reload => admin::ask_control(access, |reply| AdminCommand::Reload { peer, reply }).await,
        Route::WrongMethod { allow } => {
            let reply = AdminReply::new(405, format!("{} takes {allow}", req.path));
            return send_admin(down, &reply, &[("Allow", allow)], keep, scratch).await;
        }
        Route::NotFound => AdminReply::new(
            404,
            format!(
                "unknown admin route {}: use POST /admin/drain, PUT /admin/log-level or POST /admin/reload",
                req.path
            ),
        ),
    };
    send_admin(down, &reply, &[], keep, scratch).await
}

/// Reads an admin request body: Content-Length only, at most `admin::MAX_BODY`.
pub(super) async fn read_admin_body<B: Backend>(
    ctx: &WorkerCtx<B>,
    down: &mut Downstream<B::Stream>,
    head: &RequestHead,
) -> Result<Vec<u8>, AdminReply> {
    let len = match head.framing {
        BodyFraming::None | BodyFraming::UntilClose => return Ok(Vec::new()),
        BodyFraming::Chunked => {
            return Err(AdminReply::new(
                400,
                format!(
                    "chunked bodies are not accepted on the admin API: send Content-Length (at most {} bytes)",
                    admin::MAX_BODY
                ),
            ))
        }
        BodyFraming::Length(n) if n > admin::MAX_BODY => {
            return Err(AdminReply::new(
                413,
                format!("admin request body of {n} bytes is over {} bytes", admin::MAX_BODY),
            ))
        }
        BodyFraming::Length(n) => n as usize,
    };
    if head.expect_continue && down.filled().len() < len {
        let mut cont = Vec::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        if down.write(&mut cont).await.is_err() {
            return Err(AdminReply::new(400, "the client went away"));
        }
    }
    let deadline = Instant::now() + ctx.config.header_timeout;
    while down.filled().len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::rt::timeout(left, down.fill(IO_BUF, &ctx.buffers)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(AdminReply::new(400, "the request body ended early")),
            Err(_) => return Err(AdminReply::new(408, "request body not received in time (limits.header_timeout)")),
        }
    }
    let body = down.filled()[..len].to_vec();
    down.consume(len);
    Ok(body)
}

/// Writes an admin answer. `client.close` decides whether the connection
/// stays: only after a body that was read to its end.
pub(super) async fn send_admin<S: Stream>(
    down: &mut Downstream<S>,
    reply: &AdminReply,
    extra: &[(&str, &str)],
    client: ClientConn,
    scratch: &mut Vec<u8>,
) -> Outcome {
    admin::render(reply, extra, client, scratch);
    if down.write(scratch).await.is_err() || client.close {
        return Outcome::Close;
    }
    Outcome::KeepAlive
}
