//! The session broker with real array controllers and board daemons, as separate processes
//! against the real Docker engine, driven through the public APIs only: region choice and
//! streaming, the latency budget and the queue, recycling and leases, idempotency across a broker
//! SIGKILL, tenant isolation and credentials, a stopped controller, bad input, and the OpenAPI
//! document.
//!
//! Every test has its own broker, controllers, boards (ids, data directories, host ports) and
//! removes its containers. Each board has one CPU and holds exactly one instance, so a region is
//! "full" with one or two containers; one two-region setup runs at a time. Timeouts are generous
//! upper bounds; nothing sleeps and hopes.

use std::collections::BTreeSet;
use std::time::Duration;

use api::broker::{AutoWarm, RackHealth, SessionState, SessionView, WarmTargetSpec};
use api::rack::{ClaimState, InstanceState};
use e2e::broker::{
    Broker, GAME, OPERATOR_TOKEN, READY_TIMEOUT, SESSION_LEASE_MS, Setup, Shape, now_ms, put_catalog,
    session_request, sim_version, unix_ms, warm_of,
};
use e2e::controller::GARBAGE_BODIES;
use e2e::stream::play;
use e2e::{TestDir, ensure_image, try_docker_inspect, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

/// One two-region setup (a broker, two controllers, their daemons and containers) at a time.
static SETUPS: Semaphore = Semaphore::const_new(1);

async fn setup_slot() -> SemaphorePermit<'static> {
    ensure_image();
    SETUPS.acquire().await.expect("the semaphore is never closed")
}

/// A player close to east (15 ms) and within budget of west (60 ms).
const EAST_NEAR: [(&str, f64); 2] = [("east", 15.0), ("west", 60.0)];
/// A player close to west (20 ms) and beyond the budget of east (90 ms).
const WEST_NEAR: [(&str, f64); 2] = [("east", 90.0), ("west", 20.0)];
/// Platform heartbeat period.
const BEAT: Duration = Duration::from_secs(1);

fn is_running(container: &str) -> bool {
    try_docker_inspect(container).is_some_and(|v| v["State"]["Running"] == Value::Bool(true))
}

fn placed_in(session: &SessionView) -> (Option<&str>, Option<&str>) {
    (session.region.as_deref(), session.rack.as_deref())
}

// 1. Players land in the region their RTTs prefer, and stream from the endpoint they are given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_land_in_the_region_their_rtt_prefers_and_stream_from_the_endpoint_given() {
    let _slot = setup_slot().await;
    let setup = Setup::start("sb-region", Shape::ONE_EACH).await;
    let client = setup.client();

    let east = setup.create_active("p-east", &EAST_NEAR).await;
    let mut east_beat = client.keep_alive(&setup.key, &east.id, BEAT);
    assert_eq!(placed_in(&east), (Some("east"), Some("east-1")), "{east:#?}");
    let west = setup.create_active("p-west", &WEST_NEAR).await;
    let mut west_beat = client.keep_alive(&setup.key, &west.id, BEAT);
    assert_eq!(placed_in(&west), (Some("west"), Some("west-1")), "{west:#?}");
    assert_ne!(east.token, west.token, "each session has its own token");

    for session in [&east, &west] {
        let endpoint = session.endpoint.as_ref().unwrap();
        let ok = play(&endpoint.host, endpoint.stream_port, session.token.as_deref().unwrap(), 3).await;
        println!(
            "{} in {:?}: {}:{} answered {ok:?} and 3 frames",
            session.player_id, session.region, endpoint.host, endpoint.stream_port
        );
    }

    let active = client.sessions(&setup.key, Some(SessionState::Active)).await.expect("GET /v1/sessions");
    let ids: BTreeSet<&str> = active.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([east.id.as_str(), west.id.as_str()]), "{active:#?}");

    // The broker says why: a decision, and a claim that succeeded on the chosen rack.
    for session in [&east, &west] {
        let explain = client.explain(&setup.key, &session.id).await.expect("explain");
        assert_eq!(explain.session, session.id);
        assert!(!explain.decisions.is_empty(), "{explain:#?}");
        let rack = session.rack.as_deref().unwrap();
        assert!(
            explain.attempts.iter().any(|a| a.rack == rack && a.result == "claimed"),
            "a claimed attempt on {rack}: {explain:#?}"
        );
    }
    east_beat.stop().await;
    west_beat.stop().await;
}

// 2. With east full, a player within west's budget goes west at once; one beyond it waits queued
// (202) and is placed in east as soon as the east session ends, before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_region_sends_players_within_budget_elsewhere_and_queues_the_others_until_it_frees_up() {
    let _slot = setup_slot().await;
    let setup = Setup::start("sb-budget", Shape::ONE_EACH).await;
    let client = setup.client();

    let first = setup.create_active("p-first", &EAST_NEAR).await;
    let mut first_beat = client.keep_alive(&setup.key, &first.id, BEAT);
    assert_eq!(placed_in(&first), (Some("east"), Some("east-1")), "{first:#?}");
    let second = setup.create_active("p-second", &EAST_NEAR).await;
    let mut second_beat = client.keep_alive(&setup.key, &second.id, BEAT);
    assert_eq!(placed_in(&second), (Some("west"), Some("west-1")), "east is full: {second:#?}");

    let far_west = [("east", 15.0), ("west", 200.0)];
    let queued = setup.create("p-queued", &far_west, Some(30_000)).await;
    assert_eq!((queued.status, queued.session.state), (202, SessionState::Queued), "{queued:#?}");
    let queued = queued.session;
    assert!(queued.endpoint.is_none() && queued.instance.is_none(), "{queued:#?}");
    let deadline_at = unix_ms(&queued.deadline_at);
    let created_at = unix_ms(&queued.created_at);
    assert!((29_000..=31_000).contains(&(deadline_at - created_at)), "a 30 s deadline: {queued:#?}");
    // Still queued a moment later, nowhere placed.
    let again = client.session(&setup.key, &queued.id).await.expect("GET queued session");
    assert_eq!((again.state, again.instance.as_deref()), (SessionState::Queued, None), "{again:#?}");

    first_beat.stop().await;
    let ended = client.end_session(&setup.key, &first.id).await.expect("DELETE the first session");
    assert_eq!((ended.state, ended.reason.as_deref()), (SessionState::Ended, Some("ended_by_platform")));

    let placed = client
        .wait_session_until(&setup.key, &queued.id, Duration::from_secs(40), "to leave the queue", |s| {
            !matches!(s.state, SessionState::Queued | SessionState::Placing)
        })
        .await;
    assert_eq!(placed.state, SessionState::Active, "placed before its deadline: {placed:#?}");
    assert_eq!(placed_in(&placed), (Some("east"), Some("east-1")), "{placed:#?}");
    assert_eq!(placed.instance, first.instance, "the east instance, recycled: {placed:#?}");
    setup.check_placed(&placed).await;
    println!(
        "queued session active in east {} ms after its creation (deadline {} ms)",
        now_ms() - created_at,
        deadline_at - created_at
    );
    let explain = client.explain(&setup.key, &placed.id).await.expect("explain");
    assert!(explain.decisions.len() >= 2, "a queue decision, then a placement: {explain:#?}");
    second_beat.stop().await;
}

// 3. Ending a session recycles its instance (new container) for the next session; a session
// never heart-beated expires after its lease and its instance is released; one heart-beated every
// second stays active well past the lease length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_and_lapsed_sessions_recycle_their_instance_and_a_heart_beated_one_holds() {
    let _slot = setup_slot().await;
    let setup = Setup::start("sb-recycle", Shape::ONE_EACH).await;
    let client = setup.client();
    let (east, deployment) = (&setup.east, setup.deployment.as_str());

    // End: the instance gets a new container and comes back ready.
    let s1 = setup.create_active("p-1", &EAST_NEAR).await;
    assert_eq!(placed_in(&s1), (Some("east"), Some("east-1")), "{s1:#?}");
    let instance_id = s1.instance.clone().unwrap();
    let before = east.instance(deployment, &instance_id).await;
    let old_container = before.container_id.clone().expect("a claimed instance has a container");
    let ended = client.end_session(&setup.key, &s1.id).await.expect("DELETE");
    assert_eq!((ended.state, ended.reason.as_deref()), (SessionState::Ended, Some("ended_by_platform")));
    assert!(ended.lease_expires_at.is_none(), "an ended session holds no lease: {ended:#?}");
    let again = client.end_session(&setup.key, &s1.id).await.expect("DELETE again is idempotent");
    assert_eq!((again.state, again.reason.as_deref()), (SessionState::Ended, Some("ended_by_platform")));
    let over = client.heartbeat(&setup.key, &s1.id).await.expect_err("a heartbeat on an ended session");
    assert_eq!((over.status, over.code.as_str()), (409, "session_over"), "{over:?}");
    let claim = east.wait_claim(&s1.id, "released", |c| c.state != ClaimState::Active).await;
    assert_eq!((claim.state, claim.instance.as_str()), (ClaimState::Released, instance_id.as_str()));
    let list = east
        .wait_instances(deployment, "the instance back on a new container", |list| {
            list.iter().any(|i| {
                i.id == instance_id
                    && i.state == InstanceState::Ready
                    && i.generation > before.generation
                    && i.container_id.as_deref().is_some_and(|c| c != old_container)
            })
        })
        .await;
    let recycled = list.into_iter().find(|i| i.id == instance_id).unwrap();
    assert!(recycled.claim_key.is_none(), "{recycled:#?}");
    assert!(try_docker_inspect(&old_container).is_none(), "the old container {old_container} is removed");
    assert!(is_running(recycled.container_id.as_deref().unwrap()));

    // The next session gets it.
    client.wait_rack("east-1", RackHealth::Online, READY_TIMEOUT, |v| warm_of(v) == 1).await;
    let s2 = setup.create_active("p-2", &EAST_NEAR).await;
    assert_eq!(
        (placed_in(&s2), s2.instance.as_deref()),
        ((Some("east"), Some("east-1")), Some(instance_id.as_str()))
    );
    let s2_lease_end = unix_ms(s2.lease_expires_at.as_deref().unwrap());
    let lease = s2_lease_end - unix_ms(&s2.created_at);
    assert!(
        lease >= SESSION_LEASE_MS as i64 - 100 && lease <= SESSION_LEASE_MS as i64 + 5000,
        "the lease is {SESSION_LEASE_MS} ms from placement: {lease} ms in {s2:#?}"
    );
    let s2_instance = east.instance(deployment, &instance_id).await;

    // A session heart-beated every second, in west (east is busy).
    let s3 = setup.create_active("p-3", &EAST_NEAR).await;
    assert_eq!(placed_in(&s3), (Some("west"), Some("west-1")), "{s3:#?}");
    let mut beat = client.keep_alive(&setup.key, &s3.id, BEAT);
    let s3_instance = setup.west.instance(deployment, s3.instance.as_deref().unwrap()).await;

    // s2 is never heart-beated: it expires once its lease lapses.
    let expired = client
        .wait_session_until(&setup.key, &s2.id, Duration::from_secs(30), "to end", |s| s.state.is_final())
        .await;
    let seen_at = now_ms();
    assert_eq!(
        (expired.state, expired.reason.as_deref()),
        (SessionState::Expired, Some("lease_lapsed")),
        "{expired:#?}"
    );
    assert!(seen_at >= s2_lease_end - 100, "expired {} ms before its lease ended", s2_lease_end - seen_at);
    println!("s2 expired {} ms after its lease end", seen_at - s2_lease_end);
    let claim = east.wait_claim(&s2.id, "ended", |c| c.state != ClaimState::Active).await;
    assert!(matches!(claim.state, ClaimState::Released | ClaimState::Expired), "{claim:#?}");
    let old = s2_instance.container_id.clone().unwrap();
    east.wait_instances(deployment, "the lapsed session's instance back ready", |list| {
        list.iter().any(|i| {
            i.id == instance_id
                && i.state == InstanceState::Ready
                && i.claim_key.is_none()
                && i.container_id.as_deref().is_some_and(|c| c != old)
        })
    })
    .await;
    let over = client.heartbeat(&setup.key, &s2.id).await.expect_err("heartbeat on an expired session");
    assert_eq!((over.status, over.code.as_str()), (409, "session_over"), "{over:?}");

    // s3 holds: active through two lease lengths since its creation, same instance and container.
    let s3_created = unix_ms(&s3.created_at);
    let key = &setup.key;
    wait_until(Duration::from_secs(30), "s3 heart-beated through two lease lengths", || async {
        let now = client.session(key, &s3.id).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!((now.state, &now.instance), (SessionState::Active, &s3.instance), "{now:#?}");
        let elapsed = now_ms() - s3_created;
        if elapsed >= 2 * SESSION_LEASE_MS as i64 { Ok(now) } else { Err(format!("{elapsed} ms")) }
    })
    .await;
    beat.check().await;
    let held = client.heartbeat(&setup.key, &s3.id).await.expect("heartbeat");
    assert_eq!(held.state, SessionState::Active);
    assert!(unix_ms(held.lease_expires_at.as_deref().unwrap()) > now_ms(), "{held:#?}");
    // The heartbeat answers with the stored session (its lease at least as far as the answer's).
    let read = client.session(&setup.key, &s3.id).await.expect("GET after the heartbeat");
    let lease = |v: &SessionView| unix_ms(v.lease_expires_at.as_deref().unwrap());
    assert!(lease(&read) >= lease(&held), "{held:#?} {read:#?}");
    let without_lease = |v: &SessionView| {
        let mut json = serde_json::to_value(v).unwrap();
        json["lease_expires_at"] = Value::Null;
        json
    };
    assert_eq!(without_lease(&held), without_lease(&read), "the heartbeat answers with the stored session");
    let claim = setup.west.client().get_claim(&s3.id).await.expect("s3's claim");
    assert_eq!(claim.state, ClaimState::Active, "{claim:#?}");
    let still = setup.west.instance(deployment, &s3_instance.id).await;
    assert_eq!(
        (still.state, still.claim_key.as_deref(), &still.container_id),
        (InstanceState::Claimed, Some(s3.id.as_str()), &s3_instance.container_id)
    );
    beat.stop().await;
    println!("s3 active after {} heartbeats", beat.beats());
}

// 4. Twenty concurrent POSTs with one Idempotency-Key make one session and one claim; the same key
// with another body is refused; after a broker SIGKILL and restart the same key still answers the
// same session on the same instance, with still one claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_makes_one_session_and_one_claim_even_across_a_broker_sigkill() {
    let _slot = setup_slot().await;
    let shape = Shape { east_warm: 1, west_warm: 0, ..Shape::ONE_EACH };
    let mut setup = Setup::start("sb-idem", shape).await;
    let client = setup.client().clone();
    let request = session_request("p-idem", &EAST_NEAR, None);
    let idem = "retry-me-0001";

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, key, request) = (client.clone(), setup.key.clone(), request.clone());
            tokio::spawn(async move { client.create_session(&key, idem, &request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("POST task").unwrap_or_else(|e| panic!("a retry was refused: {e:?}")));
    }
    let ids: BTreeSet<&str> = answers.iter().map(|c| c.session.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one session for one key: {answers:#?}");
    for answer in &answers {
        assert!(matches!(answer.status, 201 | 202), "{answer:#?}");
    }
    let id = answers[0].session.id.clone();
    let session = client
        .wait_session_until(&setup.key, &id, READY_TIMEOUT, "active", |s| {
            s.state != SessionState::Queued && s.state != SessionState::Placing
        })
        .await;
    assert_eq!(session.state, SessionState::Active, "{session:#?}");
    setup.check_placed(&session).await;
    let mut beat = client.keep_alive(&setup.key, &id, BEAT);

    let one_claim = |claims: std::collections::BTreeMap<String, (String, ClaimState)>| {
        assert_eq!(claims.len(), 1, "one claim at the controller: {claims:#?}");
        let (key, (instance, state)) = claims.into_iter().next().unwrap();
        assert_eq!(
            (key.as_str(), Some(instance.as_str()), state),
            (id.as_str(), session.instance.as_deref(), ClaimState::Active)
        );
    };
    one_claim(setup.east.claims().await);
    let claimed: Vec<_> = setup
        .east
        .client()
        .instances(&setup.deployment)
        .await
        .into_iter()
        .filter(|i| i.claim_key.is_some())
        .collect();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    assert!(setup.west.claims().await.is_empty());

    let other = session_request("p-someone-else", &EAST_NEAR, None);
    let refused = client.create_session(&setup.key, idem, &other).await.expect_err("same key, other body");
    assert_eq!((refused.status, refused.code.as_str()), (409, "idempotency_key_reused"), "{refused:?}");
    let mut other_rtt = request.clone();
    other_rtt.player.rtt_ms.insert("east".into(), 16.0);
    let refused = client.create_session(&setup.key, idem, &other_rtt).await.expect_err("same key, other RTT");
    assert_eq!((refused.status, refused.code.as_str()), (409, "idempotency_key_reused"), "{refused:?}");

    // SIGKILL and restart the broker on the same data; retry.
    beat.stop().await;
    setup.broker.kill();
    setup.broker.restart().await;
    let mut beat = client.keep_alive(&setup.key, &id, BEAT);
    let retry = client.create_session(&setup.key, idem, &request).await.expect("the retry after the restart");
    assert_eq!(
        (retry.status, retry.session.id.as_str(), retry.session.state, &retry.session.instance),
        (201, id.as_str(), SessionState::Active, &session.instance),
        "{retry:#?}"
    );
    client.wait_rack("east-1", RackHealth::Online, Duration::from_secs(20), |_| true).await;
    let now = client.session(&setup.key, &id).await.expect("GET after the restart");
    assert_eq!(
        (now.state, &now.instance, &now.token),
        (SessionState::Active, &session.instance, &session.token)
    );
    one_claim(setup.east.claims().await);
    let sessions = client.sessions(&setup.key, None).await.expect("list");
    assert_eq!(
        sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()],
        "{sessions:#?}"
    );
    beat.stop().await;
}

/// Regions, games and tenants as the operator sees them.
async fn catalog(setup: &Setup) -> (Value, Value, Value) {
    let get = |path: &'static str| async move {
        let answer =
            setup.client().request(Method::GET, path, Some(OPERATOR_TOKEN), &[], None).await.unwrap();
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        answer.body
    };
    (get("/v1/regions").await, get("/v1/games").await, get("/v1/tenants").await)
}

// 5. Another tenant cannot see or touch a session (404, not 403); nothing that changes anything
// answers without credentials (401); a tenant key on an operator route is forbidden (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_sessions_and_nothing_changes_without_the_right_credential() {
    let _slot = setup_slot().await;
    let shape = Shape { east_warm: 1, west_warm: 0, ..Shape::ONE_EACH };
    let setup = Setup::start("sb-tenants", shape).await;
    let client = setup.client();
    let a = setup.create_active("p-a", &EAST_NEAR).await;
    let mut beat = client.keep_alive(&setup.key, &a.id, BEAT);
    let b_key = client.tenant_with_key("tenant-b").await;

    let not_found = |what: &str, answer: Result<SessionView, e2e::ApiError>| {
        let err = answer.expect_err(what);
        assert_eq!((err.status, err.code.as_str()), (404, "not_found"), "{what}: {err:?}");
    };
    not_found("B reads A's session", client.session(&b_key, &a.id).await);
    not_found("B heart-beats A's session", client.heartbeat(&b_key, &a.id).await);
    not_found("B ends A's session", client.end_session(&b_key, &a.id).await);
    let err = client.explain(&b_key, &a.id).await.expect_err("B explains A's session");
    assert_eq!((err.status, err.code.as_str()), (404, "not_found"), "{err:?}");
    assert!(client.sessions(&b_key, None).await.expect("B's list").is_empty(), "B sees none of A's sessions");
    let mine = client.sessions(&setup.key, None).await.expect("A's list");
    assert!(mine.iter().any(|s| s.id == a.id), "{mine:#?}");
    let still = client.session(&setup.key, &a.id).await.expect("A's session");
    assert_eq!(still.state, SessionState::Active, "B's DELETE did nothing: {still:#?}");

    // A revoked key is no credential at all.
    let extra = client.create_key("tenant-b").await.expect("a second key for B");
    let secret = extra.key.clone().expect("a new key shows its secret");
    assert!(client.sessions(&secret, None).await.expect("the second key works").is_empty());
    let revoked = client.revoke_key("tenant-b", &extra.id).await.expect("revoke the second key");
    assert_eq!((revoked.id.as_str(), revoked.key.as_deref()), (extra.id.as_str(), None), "{revoked:?}");
    let err = client.sessions(&secret, None).await.expect_err("a revoked key");
    assert_eq!((err.status, err.code.as_str()), (401, "unauthorized"), "{err:?}");

    let before = catalog(&setup).await;
    let good = serde_json::to_string(&session_request("p-intruder", &EAST_NEAR, None)).unwrap();
    let version = serde_json::to_string(&sim_version(250)).unwrap();
    let registration = json!({
        "region": "east",
        "controller_url": "http://127.0.0.1:9",
        "controller_token": "stolen",
        "boards": []
    })
    .to_string();
    let heartbeat = format!("/v1/sessions/{}/heartbeat", a.id);
    let session_path = format!("/v1/sessions/{}", a.id);
    let mutating: Vec<(Method, &str, Option<String>)> = vec![
        (Method::POST, "/v1/sessions", Some(good.clone())),
        (Method::POST, &heartbeat, None),
        (Method::DELETE, &session_path, None),
        (Method::PUT, "/v1/regions/north", Some("{}".into())),
        (Method::PUT, "/v1/games/other-game", Some("{}".into())),
        (Method::PUT, "/v1/games/e2e-game/versions/2.0", Some(version.clone())),
        (Method::PUT, "/v1/games/e2e-game/warm-targets/east", Some(r#"{"warm": 3}"#.into())),
        (Method::POST, "/v1/tenants", Some(r#"{"id": "tenant-c"}"#.into())),
        (Method::POST, "/v1/tenants/tenant-a/keys", None),
        (Method::POST, "/v1/racks/east-1/credential", None),
        (Method::POST, "/v1/racks/east-1/register", Some(registration.clone())),
    ];
    let idem = [("idempotency-key", "no-credentials-1")];
    for (method, path, body) in &mutating {
        for token in [None, Some("not-a-key")] {
            let answer =
                client.request(method.clone(), path, token, &idem, body.clone()).await.expect("an answer");
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{method} {path} with {token:?}: {answer:?}"
            );
            assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
        }
    }
    // A tenant key is a valid credential of the wrong role on operator routes.
    let operator_routes: Vec<(Method, &str, Option<String>)> = vec![
        (Method::GET, "/v1/regions", None),
        (Method::PUT, "/v1/regions/north", Some("{}".into())),
        (Method::GET, "/v1/games", None),
        (Method::PUT, "/v1/games/other-game", Some("{}".into())),
        (Method::PUT, "/v1/games/e2e-game/versions/2.0", Some(version)),
        (Method::PUT, "/v1/games/e2e-game/warm-targets/east", Some(r#"{"warm": 3}"#.into())),
        (Method::GET, "/v1/tenants", None),
        (Method::POST, "/v1/tenants", Some(r#"{"id": "tenant-c"}"#.into())),
        (Method::POST, "/v1/tenants/tenant-a/keys", None),
        (Method::POST, "/v1/racks/east-1/credential", None),
        (Method::GET, "/v1/racks", None),
        (Method::GET, "/v1/racks/east-1", None),
    ];
    for (method, path, body) in &operator_routes {
        let answer =
            client.request(method.clone(), path, Some(&b_key), &[], body.clone()).await.expect("an answer");
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "{method} {path} with a tenant key: {answer:?}"
        );
    }

    // Nothing changed: the catalog, A's session, and the rack's credential (the controller keeps
    // registering with it: the rack stays online for longer than the unreachable threshold).
    assert_eq!(catalog(&setup).await, before, "refused requests changed the catalog");
    let after_ms = now_ms();
    let first_seen = client.rack("east-1").await.expect("rack").last_seen_ms;
    wait_until(Duration::from_secs(20), "east-1 online for 3 s more", || async {
        let view = client.try_rack("east-1").await?;
        assert_eq!(view.state, RackHealth::Online, "{view:#?}");
        if now_ms() - after_ms >= 3000 && view.last_seen_ms > first_seen {
            Ok(())
        } else {
            Err(format!("last seen at {}", view.last_seen_ms))
        }
    })
    .await;
    let still = client.session(&setup.key, &a.id).await.expect("A's session");
    assert_eq!((still.state, &still.instance), (SessionState::Active, &a.instance), "{still:#?}");
    let sessions = client.sessions(&setup.key, None).await.expect("A's list");
    assert_eq!(sessions.len(), 1, "no session was created without credentials: {sessions:#?}");
    assert!(client.sessions(&b_key, None).await.expect("B's list").is_empty());
    let claims = setup.east.claims().await;
    assert_eq!(claims.keys().collect::<Vec<_>>(), vec![&a.id], "{claims:#?}");
    beat.stop().await;
}

// 6. A SIGKILLed controller makes its rack unreachable: players who prefer it go elsewhere (or
// wait), never there, while its active session stays active and its container runs; once the
// controller is back the rack is online and takes sessions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_controllers_rack_gets_no_sessions_until_it_returns_and_its_active_session_stays() {
    let _slot = setup_slot().await;
    let shape = Shape { east_boards: 2, east_warm: 2, ..Shape::ONE_EACH };
    let mut setup = Setup::start("sb-away", shape).await;
    let client = setup.client().clone();
    let key = setup.key.clone();

    let e1 = setup.create_active("p-e1", &EAST_NEAR).await;
    assert_eq!(placed_in(&e1), (Some("east"), Some("east-1")), "{e1:#?}");
    let mut beat = client.keep_alive(&key, &e1.id, BEAT);
    let e1_instance = setup.east.instance(&setup.deployment, e1.instance.as_deref().unwrap()).await;
    let e1_container = e1_instance.container_id.clone().unwrap();

    setup.east.rack.controller.kill();
    let killed_at = now_ms();
    let view = client.wait_rack("east-1", RackHealth::Unreachable, Duration::from_secs(20), |_| true).await;
    println!("east-1 unreachable {} ms after the SIGKILL: {:?}", now_ms() - killed_at, view.reason);

    // East still has a warm instance on its books, but it is never chosen.
    let p2 = setup.create("p-e2", &EAST_NEAR, None).await.session;
    let check_not_east = |s: &SessionView| {
        assert_ne!(s.rack.as_deref(), Some("east-1"), "placed on an unreachable rack: {s:#?}");
        match s.state {
            SessionState::Active => assert_eq!(placed_in(s), (Some("west"), Some("west-1")), "{s:#?}"),
            SessionState::Queued | SessionState::Placing => {}
            other => panic!("p2 is {other:?}: {s:#?}"),
        }
    };
    check_not_east(&p2);
    println!("p2 while east-1 is away: {:?} in {:?}", p2.state, p2.region);
    let p2_beat = (p2.state == SessionState::Active).then(|| client.keep_alive(&key, &p2.id, BEAT));

    // E1 stays active (and its container runs) through two lease lengths of the rack's absence.
    let away_from = now_ms();
    wait_until(Duration::from_secs(30), "two lease lengths with east-1 away", || async {
        let now = client.session(&key, &e1.id).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!((now.state, &now.instance), (SessionState::Active, &e1.instance), "{now:#?}");
        assert!(is_running(&e1_container), "E1's container {e1_container} runs");
        let rack = client.try_rack("east-1").await?;
        assert_eq!(rack.state, RackHealth::Unreachable, "{rack:#?}");
        check_not_east(&client.session(&key, &p2.id).await.map_err(|e| format!("{e:?}"))?);
        if now_ms() - away_from >= 2 * SESSION_LEASE_MS as i64 { Ok(()) } else { Err("waiting".to_string()) }
    })
    .await;
    beat.check().await;
    println!("E1 active after {} heartbeats with east-1 away", beat.beats());

    // The controller returns: the rack is online, takes a new east player on its other warm
    // instance, and E1 kept its claim (the broker's claim lease outlasts the outage) and container.
    setup.east.rack.controller.restart().await;
    client.wait_rack("east-1", RackHealth::Online, Duration::from_secs(30), |v| warm_of(v) >= 1).await;
    let p3 = setup.create_active("p-e3", &EAST_NEAR).await;
    assert_eq!(placed_in(&p3), (Some("east"), Some("east-1")), "{p3:#?}");
    assert_ne!(p3.instance, e1.instance, "{p3:#?}");
    let e1_after = client.session(&key, &e1.id).await.expect("E1 after the return");
    assert_eq!((e1_after.state, &e1_after.instance), (SessionState::Active, &e1.instance), "{e1_after:#?}");
    let claim = setup.east.client().get_claim(&e1.id).await.expect("E1's claim after the return");
    assert_eq!(
        (claim.state, Some(&claim.instance)),
        (ClaimState::Active, e1.instance.as_ref()),
        "{claim:#?}"
    );
    let now = setup.east.instance(&setup.deployment, &e1_instance.id).await;
    assert_eq!(
        (now.state, now.container_id.as_deref()),
        (InstanceState::Claimed, Some(e1_container.as_str()))
    );
    assert!(is_running(&e1_container));
    beat.stop().await;
    if let Some(mut b) = p2_beat {
        b.stop().await;
    }
}

/// A bad request: what it is, its headers and body, and the status and code it must get.
type BadCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);

// 7. Bad input gets a 4xx with a stable code and creates nothing: no session, no claim, no pool
// change, and its idempotency key stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_requests_get_a_stable_code_and_create_nothing() {
    let _slot = setup_slot().await;
    let shape = Shape { east_warm: 1, west_warm: 0, ..Shape::ONE_EACH };
    let setup = Setup::start("sb-bad", shape).await;
    let client = setup.client();
    let pool_before = setup.east.client().deployment(&setup.deployment).await.spec.pool_size;

    let good = serde_json::to_value(session_request("p-bad", &EAST_NEAR, None)).unwrap();
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body.to_string()
    };
    let mut absurd_rtt = good.clone();
    absurd_rtt["player"]["rtt_ms"]["east"] = json!(1e9);
    let mut many_regions = good.clone();
    for i in 0..65 {
        many_regions["player"]["rtt_ms"][format!("region-{i}")] = json!(20);
    }
    let json_type = ("content-type", "application/json");
    let cases: Vec<BadCase> = vec![
        (
            "unknown game",
            vec![("idempotency-key", "bad-1")],
            with("game", json!("no-such-game")),
            404,
            "unknown_game",
        ),
        ("malformed JSON", vec![("idempotency-key", "bad-2")], "{not json".into(), 400, "invalid_body"),
        (
            "unknown field",
            vec![("idempotency-key", "bad-3")],
            with("colour", json!("red")),
            400,
            "invalid_body",
        ),
        (
            "negative deadline",
            vec![("idempotency-key", "bad-4")],
            with("deadline_ms", json!(-5)),
            400,
            "invalid_deadline",
        ),
        ("absurd RTT", vec![("idempotency-key", "bad-5")], absurd_rtt.to_string(), 400, "invalid_rtt"),
        (
            "RTTs to 65 regions",
            vec![("idempotency-key", "bad-8")],
            many_regions.to_string(),
            400,
            "too_many_regions",
        ),
        (
            "a 3 MiB body",
            vec![("idempotency-key", "bad-9")],
            with("pad", json!("x".repeat(3 << 20))),
            413,
            "body_too_large",
        ),
        ("no Idempotency-Key", vec![json_type], good.to_string(), 400, "missing_idempotency_key"),
        (
            "invalid game id",
            vec![("idempotency-key", "bad-6")],
            with("game", json!("Not A Game!")),
            400,
            "invalid_game",
        ),
        (
            "not JSON",
            vec![("idempotency-key", "bad-7"), ("content-type", "text/plain")],
            good.to_string(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, headers, body, status, code) in &cases {
        let answer = client
            .request(Method::POST, "/v1/sessions", Some(&setup.key), headers, Some(body.clone()))
            .await
            .expect(what);
        assert_eq!((answer.status, answer.code()), (*status, *code), "{what}: {answer:?}");
        assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {answer:?}");
    }
    let too_long = "k".repeat(129);
    let answer = client
        .request(
            Method::POST,
            "/v1/sessions",
            Some(&setup.key),
            &[("idempotency-key", &too_long)],
            Some(good.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "a 129-character Idempotency-Key: {answer:?}");

    assert!(client.sessions(&setup.key, None).await.expect("list").is_empty(), "bad input made a session");
    for rack in [&setup.east, &setup.west] {
        let claims = rack.claims().await;
        assert!(claims.is_empty(), "bad input made a claim on {}: {claims:#?}", rack.id);
    }
    let instances = setup.east.client().instances(&setup.deployment).await;
    assert!(instances.iter().all(|i| i.claim_key.is_none()), "{instances:#?}");
    let pool_after = setup.east.client().deployment(&setup.deployment).await.spec.pool_size;
    assert_eq!(pool_after, pool_before, "bad input changed the pool size");

    // A key refused with its bad body is still free for a good one.
    let request = session_request("p-bad", &EAST_NEAR, None);
    let created =
        client.create_session(&setup.key, "bad-3", &request).await.expect("a good body under the same key");
    assert!(matches!(created.status, 201 | 202), "{created:#?}");
    assert_eq!(client.sessions(&setup.key, None).await.expect("list").len(), 1);
    client.end_session(&setup.key, &created.session.id).await.expect("DELETE");
}

// 8. The OpenAPI document is 3.1 and lists every session route of the contract (and the operator
// and rack routes too: it is generated from the router).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_3_1_and_lists_every_session_route() {
    let dir = TestDir::new("sb-openapi");
    let broker = Broker::start(dir.path(), &[]).await;
    let doc = broker.client.openapi().await;
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1"), "openapi {version:?}");
    let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("no paths in {doc}"));
    // Path parameters may have any name: compare with `{}` in their place.
    let shape = |path: &str| {
        let mut out = String::new();
        let mut inside = false;
        for c in path.chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str("{}");
                }
                '}' => inside = false,
                c if !inside => out.push(c),
                _ => {}
            }
        }
        out
    };
    let listed: std::collections::BTreeMap<String, &Value> =
        paths.iter().map(|(p, v)| (shape(p), v)).collect();
    let has = |path: &str, method: &str| listed.get(&shape(path)).is_some_and(|v| v[method].is_object());
    let list = &doc["paths"]["/v1/sessions"]["get"];
    let params: Vec<&str> =
        list["parameters"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(params, ["state", "limit", "after"], "{list}");
    assert!(
        list["responses"]["200"]["headers"]["x-next-cursor"].is_object(),
        "the page cursor header: {list}"
    );
    let sessions = [
        ("/v1/sessions", "post"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/heartbeat", "post"),
        ("/v1/sessions/{id}/explain", "get"),
    ];
    let missing: Vec<_> = sessions.iter().filter(|(p, m)| !has(p, m)).collect();
    assert!(
        missing.is_empty(),
        "session routes missing from /openapi.json: {missing:?}; listed: {:?}",
        listed.keys()
    );
    let others = [
        ("/v1/regions/{id}", "put"),
        ("/v1/regions", "get"),
        ("/v1/games/{id}", "put"),
        ("/v1/games", "get"),
        ("/v1/games/{id}/versions/{version}", "put"),
        ("/v1/games/{id}/warm-targets/{region}", "put"),
        ("/v1/tenants", "post"),
        ("/v1/tenants/{id}/keys", "post"),
        ("/v1/tenants/{id}/keys/{key_id}", "delete"),
        ("/v1/racks/{id}/credential", "post"),
        ("/v1/racks", "get"),
        ("/v1/racks/{id}", "get"),
        ("/v1/racks/{id}/register", "post"),
    ];
    let missing: Vec<_> = others.iter().filter(|(p, m)| !has(p, m)).collect();
    assert!(missing.is_empty(), "operator and rack routes missing from /openapi.json: {missing:?}");
    println!("{} paths listed", listed.len());
    assert!(broker.client.metrics().await.contains('#'), "GET /metrics is a Prometheus exposition");
}

// 8b. Every mutating route that the OpenAPI document lists answers 401 without a credential, and
// with the operator's, garbage bodies get a coded 4xx, never a 5xx. The routes come from the
// document, so a route added later is covered without being named here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_mutating_route_needs_a_credential_and_answers_garbage_with_a_code() {
    let dir = TestDir::new("sb-routes");
    let broker = Broker::start(dir.path(), &[]).await;
    let client = &broker.client;
    let doc = client.openapi().await;
    let paths = doc["paths"].as_object().unwrap_or_else(|| panic!("no paths in {doc}"));
    let mut mutating: Vec<(Method, String)> = Vec::new();
    for (path, item) in paths {
        // Every path parameter gets the same plausible id.
        let concrete: String = path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "x-1" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            if item[method.as_str().to_lowercase()].is_object() {
                mutating.push((method, concrete.clone()));
            }
        }
    }
    assert!(mutating.len() >= 12, "too few mutating routes listed: {mutating:?}");
    let idem = [("idempotency-key", "routes-1")];
    for (method, path) in &mutating {
        for token in [None, Some("not-a-key")] {
            let answer = client
                .request(method.clone(), path, token, &idem, Some("{}".into()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{method} {path} with {token:?}: {answer:?}"
            );
        }
        for body in GARBAGE_BODIES {
            let answer = client
                .request(method.clone(), path, Some(OPERATOR_TOKEN), &idem, Some(body.into()))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            answer.assert_no_5xx_and_coded(&format!("{method} {path} with {body:?}"));
        }
    }
    println!("{} mutating routes", mutating.len());
}

// 9. A warm target that follows demand: the broker measures the instances' boot time from the
// racks' events and the arrival rate of requests; a burst raises the region's target to its cap,
// and the rack's pool with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_target_that_follows_demand_rises_with_a_burst_of_requests() {
    let _slot = setup_slot().await;
    let shape = Shape { east_boards: 2, west_boards: 1, east_warm: 1, west_warm: 1 };
    let setup = Setup::start("sb-demand", shape).await;
    let client = setup.client();
    let auto = WarmTargetSpec { warm: 1, auto: Some(AutoWarm { max: 2, safety: 4.0 }) };
    let view = client.put_warm_target_spec(GAME, "east", &auto).await.expect("PUT an auto warm target");
    let boot = view.boot_ms.expect("the boot time is measured from the racks' events");
    assert!((1..60_000).contains(&boot), "{view:#?}");
    assert_eq!(view.effective, 1, "no requests yet: the floor: {view:#?}");

    // 40 players close to east and beyond west's budget: one gets the warm instance, the rest
    // queue briefly.
    let far_west = [("east", 15.0), ("west", 200.0)];
    let mut sessions = Vec::new();
    for i in 0..40 {
        sessions.push(setup.create(&format!("p-burst-{i}"), &far_west, Some(3000)).await.session);
    }
    let view = client.put_warm_target_spec(GAME, "east", &auto).await.expect("PUT the same target again");
    assert!(view.arrivals_per_s > 0.4, "40 requests in a few seconds: {view:#?}");
    assert_eq!(view.effective, 2, "arrivals x boot x safety is above the cap: {view:#?}");

    // Once the burst is over (no session claimed, no cold start pending), the rack's pool is
    // the raised target: 2, where the fixed floor would give 1.
    for session in &sessions {
        client.end_session(&setup.key, &session.id).await.expect("DELETE a burst session");
    }
    let east = setup.east.rack.client().clone();
    let deployment = setup.deployment.clone();
    wait_until(Duration::from_secs(30), "east-1's pool to hold the raised target", || {
        let (east, deployment) = (east.clone(), deployment.clone());
        async move {
            let instances = east.try_instances(&deployment).await?;
            let claimed = instances.iter().filter(|i| i.state == InstanceState::Claimed).count();
            let pool = east.deployment(&deployment).await.spec.pool_size;
            if claimed == 0 && pool == 2 { Ok(()) } else { Err(format!("pool {pool}, claimed {claimed}")) }
        }
    })
    .await;
}

/// Retention: a finished session stays readable, and its idempotency key answers with it, until
/// the retention period has passed; then it is deleted and the key makes a new session. A live
/// session is never deleted, however old. No rack is needed: with none, sessions queue and fail
/// at their deadline.
#[tokio::test]
async fn finished_sessions_go_after_the_retention_period_and_live_ones_stay() {
    let dir = TestDir::new("sb-retention");
    let broker = Broker::start(dir.path(), &["--session-retention-ms", "2000"]).await;
    let client = broker.client.clone();
    put_catalog(&client).await;
    let key = client.tenant_with_key("retained").await;

    let short = session_request("p-short", &EAST_NEAR, Some(300));
    let first = client.create_session(&key, "k-short", &short).await.expect("POST");
    assert_eq!((first.status, first.session.state), (202, SessionState::Queued), "{first:?}");
    let live =
        client.create_session(&key, "k-live", &session_request("p-live", &EAST_NEAR, Some(60_000))).await;
    let live = live.expect("POST").session;
    let failed = client
        .wait_session_until(&key, &first.session.id, Duration::from_secs(10), "to fail", |s| {
            s.state.is_final()
        })
        .await;
    assert_eq!((failed.state, failed.reason.as_deref()), (SessionState::Failed, Some("no_capacity")));
    let retry = client.create_session(&key, "k-short", &short).await.expect("a retry while it is kept");
    assert_eq!(retry.session.id, first.session.id, "the key answers with the finished session");

    let gone = wait_until(Duration::from_secs(15), "the failed session deleted", || async {
        match client.session(&key, &first.session.id).await {
            Err(e) if e.status == 404 => Ok(e),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(gone.code, "not_found", "{gone:?}");
    let still = client.session(&key, &live.id).await.expect("the live session is kept");
    assert_eq!(still.state, SessionState::Queued);
    let fresh = client.create_session(&key, "k-short", &short).await.expect("the key after retention");
    assert_eq!(fresh.status, 202, "{fresh:?}");
    assert_ne!(fresh.session.id, first.session.id, "a new session");
    let metrics = client.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("session_broker_sessions_pruned_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

// GET /v1/sessions pages: `limit` sessions newest first, an x-next-cursor header while more
// follow; following the cursors lists every session of the tenant once. Bad limits and
// cursors are refused with a code.
#[tokio::test]
async fn session_lists_come_in_pages_that_cover_every_session_once() {
    let dir = TestDir::new("sb-pages");
    let broker = Broker::start(dir.path(), &[]).await;
    let client = broker.client.clone();
    put_catalog(&client).await;
    let key = client.tenant_with_key("pager").await;
    let other = client.tenant_with_key("pager-other").await;
    // No rack: every session waits (queued), which is enough to list them.
    let mut created = Vec::new();
    for i in 0..7 {
        let request = session_request(&format!("p-{i}"), &EAST_NEAR, Some(60_000));
        created
            .push(client.create_session(&key, &format!("k-{i}"), &request).await.expect("POST").session.id);
    }
    client
        .create_session(&other, "k-x", &session_request("p-x", &EAST_NEAR, Some(60_000)))
        .await
        .expect("POST for the other tenant");

    let mut pages = Vec::new();
    let mut path = "/v1/sessions?limit=3".to_string();
    loop {
        let answer = client.request(Method::GET, &path, Some(&key), &[], None).await.unwrap();
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let page: Vec<SessionView> = serde_json::from_value(answer.body.clone()).unwrap();
        pages.push(page.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
        assert!(pages.len() <= 3, "the cursors must end: {pages:?}");
        match answer.headers.get("x-next-cursor").and_then(|v| v.to_str().ok()) {
            Some(cursor) => path = format!("/v1/sessions?limit=3&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1], "{pages:?}");
    let listed: Vec<String> = pages.concat();
    let unpaged: Vec<String> = client.sessions(&key, None).await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(listed, unpaged, "the pages, in order, are the whole list");
    let mut sorted = listed.clone();
    sorted.sort();
    created.sort();
    assert_eq!(sorted, created, "every session of the tenant once, none of the other's");

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("after=garbage", "invalid_cursor"),
        ("after=12.", "invalid_cursor"),
        ("limit=abc", "invalid_query"),
    ] {
        let answer =
            client.request(Method::GET, &format!("/v1/sessions?{query}"), Some(&key), &[], None).await;
        let answer = answer.unwrap();
        assert_eq!((answer.status, answer.code()), (400, code), "{query}: {answer:?}");
    }
}
