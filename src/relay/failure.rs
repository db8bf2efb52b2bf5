//! What can go wrong with a request once its head is parsed, which side
//! failed, and the status the Agent gets. The rule (DESIGN §1): a fault on
//! the intake's side or in the relay is answered 502, 503 or 504, which the
//! Agent retries, never a 4xx that would make it drop the payload; a
//! request that really is malformed is refused with its 4xx; a fault on
//! the Agent's side, or one after the answer has started, closes the
//! connection (the Agent sees a network error and retries).

use std::net::SocketAddr;

use crate::http1::RequestError;
use crate::metrics::ErrorCause;

/// A failure after the head was parsed.
pub(super) enum Failure {
    /// The Agent went away or broke the framing mid-body: close, answer nothing.
    Downstream(String),
    /// The request is refused by the relay itself (4xx), nothing forwarded upstream
    /// beyond what the session will never carry again.
    Refused(RequestError),
    /// The upstream side failed before the answer started: 502/503/504.
    Upstream { cause: ErrorCause, detail: String, addr: Option<SocketAddr> },
    /// The upstream side failed after the answer started: close.
    AnswerCut { cause: ErrorCause, detail: String },
}

/// Which side a failure came from (a log field, and what decides the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The Agent's connection or request.
    Agent,
    /// The intake, the network to it, DNS, or the egress proxy.
    Intake,
    /// The relay itself: draining, over its connection limit, or a port with no upstream.
    Relay,
}

impl Side {
    pub(super) fn name(self) -> &'static str {
        match self {
            Side::Agent => "agent",
            Side::Intake => "intake",
            Side::Relay => "relay",
        }
    }
}

impl Failure {
    #[allow(dead_code)]
    pub(super) fn side(&self) -> Side {
        match self {
            Failure::Downstream(_) | Failure::Refused(_) => Side::Agent,
            Failure::Upstream { cause, .. } | Failure::AnswerCut { cause, .. } => side_of(*cause),
        }
    }
}

/// The side an upstream-fault cause belongs to.
pub(super) fn side_of(cause: ErrorCause) -> Side {
    match cause {
        ErrorCause::Unconfigured | ErrorCause::Draining | ErrorCause::Overloaded => Side::Relay,
        _ => Side::Intake,
    }
}

/// The status the Agent gets for `cause`: always one it retries (DESIGN §1).
pub(super) fn answer_status_for(cause: ErrorCause) -> u16 {
    match cause {
        ErrorCause::Unresolved
        | ErrorCause::Unconfigured
        | ErrorCause::Draining
        | ErrorCause::Overloaded
        | ErrorCause::Down => 503,
        ErrorCause::Timeout => 504,
        ErrorCause::Connect
        | ErrorCause::ConnectTimeout
        | ErrorCause::Tls
        | ErrorCause::Closed
        | ErrorCause::BadAnswer
        | ErrorCause::Write
        | ErrorCause::Proxy => 502,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_maps_to_a_retried_status_and_a_side() {
        for c in ErrorCause::ALL {
            assert!(matches!(answer_status_for(c), 502..=504), "{c:?}");
        }
        assert_eq!(answer_status_for(ErrorCause::Down), 503);
        assert_eq!(answer_status_for(ErrorCause::Timeout), 504);
        assert_eq!(answer_status_for(ErrorCause::Proxy), 502);
        assert_eq!(side_of(ErrorCause::Overloaded), Side::Relay);
        assert_eq!(side_of(ErrorCause::Tls), Side::Intake);
        assert_eq!(Failure::Downstream("gone".into()).side(), Side::Agent);
    }
}
