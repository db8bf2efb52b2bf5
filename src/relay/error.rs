//! The relay's one error: what went wrong with a request once its head was
//! parsed, on which side, at which step, with the source error. It alone
//! decides what the Agent gets (DESIGN §1), through [`crate::fault::Cause`]:
//! - a fault of the intake's side or the relay's before any answer byte
//!   went out: 502, 503 or 504, which the Agent retries;
//! - a request that really is malformed: its 4xx, nothing forwarded (a
//!   chunked body found bad on the way: its session is never used again);
//! - a fault of the Agent's side, or of the intake's after the answer
//!   started: the connection is closed (the Agent sees a network error and
//!   retries).
//!
//! The metric label (`cause`) and the log fields (`side`, `cause`, `addr`,
//! `error`) come from here too; every message is written once, here.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::fault::{Cause, Side};
use crate::http1::{RequestError, ResponseError};
use crate::upstream::connect::ConnectError;
use crate::upstream::h2pool::conn::StreamFault;
use crate::upstream::h2pool::H2ConnectError;
use crate::upstream::tls::is_tls_error;

/// A failure after the head was parsed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The Agent went away or stalled mid-request: close, answer nothing.
    #[error(transparent)]
    Agent(#[from] AgentFault),
    /// The request is refused by the relay itself (4xx); nothing forwarded
    /// beyond what the session will never carry again.
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// The intake's side or the relay failed before the answer started.
    #[error("{fault}")]
    Upstream { fault: UpstreamFault, addr: Option<SocketAddr> },
    /// The intake's side failed after the answer started: close.
    #[error("{fault}")]
    AnswerCut { fault: UpstreamFault, addr: Option<SocketAddr> },
}

/// The Agent's side failed mid-request.
#[derive(Debug, thiserror::Error)]
pub enum AgentFault {
    #[error("client stopped sending the body")]
    Stalled,
    #[error("client closed mid-body")]
    ClosedMidBody,
    #[error("client connection failed: {0}")]
    Io(io::Error),
}

/// Where the exchange stood when the intake's side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    BeforeBodySent,
    BeforeAnswer,
    MidAnswer,
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            When::BeforeBodySent => "before the body was sent",
            When::BeforeAnswer => "before answering",
            When::MidAnswer => "mid-answer",
        })
    }
}

/// What failed on the intake's side (or in the relay), with its source.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFault {
    #[error(transparent)]
    Connect(Box<ConnectError>),
    #[error(transparent)]
    H2Connect(Box<H2ConnectError>),
    #[error("writing the request to the intake failed: {0}")]
    Write(io::Error),
    #[error("the intake stopped reading the request for {0:?} (upstream.response_timeout)")]
    WriteStalled(Duration),
    #[error("the intake closed the connection {0}")]
    Closed(When),
    #[error("the intake connection failed {when}: {source}")]
    Read { source: io::Error, when: When },
    #[error("no answer within upstream.response_timeout ({0:?})")]
    NoAnswer(Duration),
    #[error("the intake stopped sending its answer")]
    AnswerStalled,
    #[error("the intake switched protocols")]
    SwitchedProtocols,
    #[error(transparent)]
    BadHead(ResponseError),
    #[error("the intake's chunked answer is malformed: {0}")]
    BadChunk(&'static str),
    #[error("an incomplete answer head (a relay bug)")]
    IncompleteHead,
    #[error("the intake's DATA ({sent} bytes) does not match its content-length ({total})")]
    LengthMismatch { sent: u64, total: u64 },
    #[error("{fault} {when}")]
    Stream { fault: StreamFault, when: When },
    #[error("the intake refused the stream {times} times (REFUSED_STREAM or GOAWAY; upstream.retries = {retries})")]
    RefusedAgain { times: usize, retries: usize },
    #[error("the intake refused the stream (REFUSED_STREAM or GOAWAY) after its body had gone")]
    RefusedAfterBody,
    #[error(
        "every HTTP/2 connection to the intake is at its stream limit and {queued} requests wait \
         (upstream.h2_max_connections = {max_connections}, upstream.h2_max_queued = {queued})"
    )]
    QueueFull { queued: usize, max_connections: usize },
    #[error("every HTTP/2 connection to the intake is at its stream limit (upstream.h2_max_connections = {0})")]
    NoStream(usize),
    #[error("the relay is shutting down and its drain timeout passed")]
    Draining,
    #[error("the intake picked h2 and then http/1.1 by ALPN on every new session")]
    AlpnFlapping,
    /// The port has no upstream (appsec by default); the route says why.
    #[error("{0}")]
    Unconfigured(&'static str),
}

impl UpstreamFault {
    /// The step that failed: it decides the status and the metric label.
    pub fn cause(&self) -> Cause {
        use UpstreamFault as F;
        match self {
            F::Connect(e) => e.cause(),
            F::H2Connect(e) => e.cause(),
            F::Write(_) | F::WriteStalled(_) => Cause::Write,
            F::Read { source, .. } if is_tls_error(source) => Cause::Tls,
            F::Closed(_) | F::Read { .. } | F::RefusedAgain { .. } | F::RefusedAfterBody | F::IncompleteHead => {
                Cause::Closed
            }
            F::Stream { fault, .. } => fault.cause(),
            F::NoAnswer(_) | F::AnswerStalled => Cause::Timeout,
            F::SwitchedProtocols | F::AlpnFlapping | F::BadHead(_) | F::BadChunk(_) | F::LengthMismatch { .. } => {
                Cause::BadAnswer
            }
            F::QueueFull { .. } | F::NoStream(_) => Cause::Overloaded,
            F::Draining => Cause::Draining,
            F::Unconfigured(_) => Cause::Unconfigured,
        }
    }

    /// The fault before the answer started, at `addr`.
    pub fn at(self, addr: SocketAddr) -> RelayError {
        RelayError::Upstream { fault: self, addr: Some(addr) }
    }
}

impl From<UpstreamFault> for RelayError {
    fn from(fault: UpstreamFault) -> Self {
        RelayError::Upstream { fault, addr: None }
    }
}

impl From<ConnectError> for RelayError {
    fn from(e: ConnectError) -> Self {
        let addr = e.addr();
        RelayError::Upstream { fault: UpstreamFault::Connect(Box::new(e)), addr }
    }
}

impl From<H2ConnectError> for RelayError {
    fn from(e: H2ConnectError) -> Self {
        let addr = e.addr();
        RelayError::Upstream { fault: UpstreamFault::H2Connect(Box::new(e)), addr }
    }
}

impl RelayError {
    /// The side that failed (a log field).
    pub fn side(&self) -> Side {
        match self {
            RelayError::Agent(_) | RelayError::Refused(_) => Side::Agent,
            RelayError::Upstream { fault, .. } | RelayError::AnswerCut { fault, .. } => fault.cause().side(),
        }
    }

    /// The step of an upstream or relay fault (the metric label).
    pub fn cause(&self) -> Option<Cause> {
        match self {
            RelayError::Agent(_) | RelayError::Refused(_) => None,
            RelayError::Upstream { fault, .. } | RelayError::AnswerCut { fault, .. } => Some(fault.cause()),
        }
    }

    /// The status the Agent gets; `None`: the connection is closed instead.
    pub fn status(&self) -> Option<u16> {
        match self {
            RelayError::Agent(_) | RelayError::AnswerCut { .. } => None,
            RelayError::Refused(e) => Some(e.status()),
            RelayError::Upstream { fault, .. } => Some(fault.cause().status()),
        }
    }

    /// An Agent read that failed, timed out or hit the end.
    pub fn agent_io(e: io::Error) -> RelayError {
        RelayError::Agent(AgentFault::Io(e))
    }
}

/// An answer on its way to the Agent: while nothing of it has reached the
/// Agent, a fault still gets a status the Agent retries; after that, only
/// a cut.
pub fn answer_fault(head_pending: bool, fault: UpstreamFault, addr: SocketAddr) -> RelayError {
    if head_pending {
        RelayError::Upstream { fault, addr: Some(addr) }
    } else {
        RelayError::AnswerCut { fault, addr: Some(addr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_stays_small_on_the_hot_path() {
        // Returned by every body read: connect failures are boxed.
        assert!(std::mem::size_of::<RelayError>() <= 96, "{}", std::mem::size_of::<RelayError>());
    }

    #[test]
    fn the_error_alone_decides_status_side_and_label() {
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let cut = RelayError::AnswerCut { fault: UpstreamFault::AnswerStalled, addr: Some(addr) };
        assert_eq!(cut.status(), None);
        assert_eq!(cut.cause(), Some(Cause::Timeout));
        let timeout = UpstreamFault::NoAnswer(Duration::from_secs(5)).at(addr);
        assert_eq!(timeout.status(), Some(504));
        assert_eq!(timeout.side(), Side::Intake);
        let draining = RelayError::from(UpstreamFault::Draining);
        assert_eq!((draining.status(), draining.side()), (Some(503), Side::Relay));
        let gone = RelayError::Agent(AgentFault::ClosedMidBody);
        assert_eq!((gone.status(), gone.side(), gone.cause()), (None, Side::Agent, None));
        let refused = RelayError::Refused(RequestError::BodyTooLarge { len: 10, limit: 5 });
        assert_eq!(refused.status(), Some(413));
        // A TLS failure mid-answer keeps its rustls cause: tls, not closed.
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        let read = UpstreamFault::Read { source: tls, when: When::MidAnswer };
        assert_eq!(read.cause(), Cause::Tls);
        assert!(read.to_string().contains("mid-answer"), "{read}");
        let closed = UpstreamFault::Read { source: io::ErrorKind::ConnectionReset.into(), when: When::BeforeAnswer };
        assert_eq!(closed.cause(), Cause::Closed);
    }
}
