//! The session token is the claimed instance's stream token: a placed session's player streams
//! with it, and the instance refuses any other token. The broker, controllers and board daemons
//! run as separate processes against the real Docker engine (one two-region [`Setup`]).

use std::time::Duration;

use api::broker::SessionState;
use e2e::broker::{Setup, Shape};
use e2e::ensure_image;
use e2e::stream::{hello, play};

/// A player close to east (15 ms) and within budget of west (60 ms).
const EAST_NEAR: [(&str, f64); 2] = [("east", 15.0), ("west", 60.0)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_token_streams_and_a_made_up_one_is_refused() {
    ensure_image();
    let setup = Setup::start("sb-token", Shape::ONE_EACH).await;
    let client = setup.client();
    let session = setup.create_active("p-token", &EAST_NEAR).await;
    let mut beat = client.keep_alive(&setup.key, &session.id, Duration::from_secs(1));
    assert_eq!(session.state, SessionState::Active);
    let token = session.token.clone().expect("an active session has a token");

    // The broker hands out the token the rack gave with the claim, not one of its own.
    let rack = setup.rack(session.rack.as_deref().expect("placed on a rack"));
    let claim = rack.client().get_claim(&session.id).await.expect("the rack's claim of the session");
    assert_eq!(claim.stream_token.as_ref(), Some(&token), "{claim:#?}");

    let endpoint = session.endpoint.as_ref().expect("an active session has an endpoint");
    let ok = play(&endpoint.host, endpoint.stream_port, &token, 3).await;
    assert!(ok.starts_with("OK "), "{ok}");
    // Shaped like a real token (`st_` and 64 hex digits), but given to no instance.
    let made_up = format!("st_{}", "5a".repeat(32));
    assert_eq!(hello(&endpoint.host, endpoint.stream_port, &made_up).await, "ERR bad_token");
    beat.stop().await;
}
