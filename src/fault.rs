//! The classification of what can fail on the request path: which side
//! failed ([`Side`]) and at which step ([`Cause`]). It alone decides the
//! status the Agent gets (DESIGN §1: a fault of the intake's side or the
//! relay's is answered 502, 503 or 504, which the Agent retries, never a
//! 4xx that would make it drop the payload), the metric label
//! (`fipsrelay_upstream_errors_total{product,cause}`) and the log's `side` field. It names
//! no I/O and no error text: the errors that carry a source (the relay's
//! `relay::error::RelayError`, the upstream's `ConnectError`) classify
//! themselves with it.

/// Which side a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Agent's connection or request.
    Agent,
    /// The intake, the network to it, DNS, or the egress proxy.
    Intake,
    /// The relay itself: draining, over its limits, out of descriptors, or
    /// a port with no upstream.
    Relay,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Agent => "agent",
            Side::Intake => "intake",
            Side::Relay => "relay",
        }
    }
}

/// Why the relay answered 502/503/504 (or closed) instead of the intake:
/// the step that failed. It alone decides the status, the metric label and
/// the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The host has no address (not resolved yet, or DNS failed).
    Unresolved,
    Connect,
    ConnectTimeout,
    Tls,
    /// The intake closed or reset before its answer was complete.
    Closed,
    /// No answer head within `upstream.response_timeout`.
    Timeout,
    /// The answer could not be parsed or framed.
    BadAnswer,
    /// Writing the request to the intake failed.
    Write,
    /// No upstream configured for the port (appsec).
    Unconfigured,
    /// Shutdown's drain timeout struck first.
    Draining,
    /// More Agent connections than `limits.max_connections` on a worker.
    Overloaded,
    /// Every address of the host is marked down by the health checks.
    Down,
    /// The egress proxy failed or refused the CONNECT tunnel.
    Proxy,
    /// The relay could not get a socket for the connect: its own
    /// descriptors ran out (EMFILE, ENFILE). Never counted against the
    /// intake's health.
    LocalResources,
}

impl Cause {
    pub const ALL: [Cause; 14] = [
        Cause::Unresolved,
        Cause::Connect,
        Cause::ConnectTimeout,
        Cause::Tls,
        Cause::Closed,
        Cause::Timeout,
        Cause::BadAnswer,
        Cause::Write,
        Cause::Unconfigured,
        Cause::Draining,
        Cause::Overloaded,
        Cause::Down,
        Cause::Proxy,
        Cause::LocalResources,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::Unresolved => "unresolved",
            Cause::Connect => "connect",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::Tls => "tls",
            Cause::Closed => "closed",
            Cause::Timeout => "timeout",
            Cause::BadAnswer => "bad_answer",
            Cause::Write => "write",
            Cause::Unconfigured => "unconfigured",
            Cause::Draining => "draining",
            Cause::Overloaded => "overloaded",
            Cause::Down => "upstream_down",
            Cause::Proxy => "proxy",
            Cause::LocalResources => "local_resources",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap()
    }
}

impl Cause {
    /// The status the Agent gets: always one it retries (DESIGN §1).
    pub fn status(self) -> u16 {
        match self {
            Cause::Unresolved
            | Cause::Unconfigured
            | Cause::Draining
            | Cause::Overloaded
            | Cause::Down
            | Cause::LocalResources => 503,
            Cause::Timeout => 504,
            Cause::Connect
            | Cause::ConnectTimeout
            | Cause::Tls
            | Cause::Closed
            | Cause::BadAnswer
            | Cause::Write
            | Cause::Proxy => 502,
        }
    }

    /// The side a cause belongs to.
    pub fn side(self) -> Side {
        match self {
            Cause::Unconfigured | Cause::Draining | Cause::Overloaded | Cause::LocalResources => Side::Relay,
            _ => Side::Intake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_maps_to_a_retried_status_a_side_and_its_own_label() {
        for c in Cause::ALL {
            assert!(matches!(c.status(), 502..=504), "{c:?}");
            assert_eq!(Cause::ALL[c.index()], c);
        }
        let mut labels: Vec<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Cause::ALL.len());
        assert_eq!(Cause::Down.status(), 503);
        assert_eq!(Cause::Timeout.status(), 504);
        assert_eq!(Cause::Proxy.status(), 502);
        assert_eq!(Cause::Overloaded.side(), Side::Relay);
        assert_eq!(Cause::Tls.side(), Side::Intake);
        assert_eq!(
            (Cause::LocalResources.status(), Cause::LocalResources.side(), Cause::LocalResources.label()),
            (503, Side::Relay, "local_resources")
        );
    }
}
