//! `upstream.protocol = "auto"`: every new session to the intake is driven
//! by the protocol ALPN chose on it, whatever the relay remembers of the
//! host. An intake that served HTTP/1.1 and turns HTTP/2 on (or one address
//! of a host that speaks it while another does not) is served over HTTP/2
//! from its next session, never sent HTTP/1.1 bytes over an h2 session.

mod common;

use common::*;
use loadgen::mock::{MockConfig, MockIntake};

both_backends!(an_intake_that_turns_h2_on_is_spoken_to_in_h2_from_its_next_session, |io: &str| {
    let dir = TestDir::new();
    let old = Intake::start_config(dir.path(), |c| c.http1_only = true);
    let addr = old.addr();
    // One worker: one memory of the host's protocol.
    let extra = "upstream.protocol = \"auto\"\nworkers.threads = 1";
    let relay = Relay::start(dir.path(), io, addr, &old.ca_file, extra);
    let body = b"{\"series\":[]}";
    let r = relay.request(1, "POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let records = old.mock.records();
    assert_eq!(records.len(), 1);
    assert!(!records[0].http2, "the first intake offers only http/1.1");

    // The same address, now an intake that offers h2.
    let Intake { mock, pki, .. } = old;
    drop(mock);
    let new = MockIntake::start(MockConfig::new(addr, pki.leaf_cert_pem.clone(), pki.leaf_key_pem.clone()))
        .unwrap_or_else(|e| panic!("mock intake on {addr}: {e}"));
    let mut agent = relay.connect(1);
    for i in 0..6 {
        let r = agent.request("POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], body);
        assert_eq!(
            r.status,
            202,
            "request {i} after the switch: {}\n{}",
            String::from_utf8_lossy(&r.body),
            relay.log()
        );
    }
    let records = new.records();
    assert_eq!(records.len(), 6, "every request reached the new intake once");
    assert!(records.iter().all(|r| r.http2 && r.body_hash == body_hash(body)), "{records:?}");
    assert!(relay.log().contains("picked h2 by ALPN again"), "{}", relay.log());
});
