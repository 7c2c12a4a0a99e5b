//! The array controller with real board daemons, as separate processes against the real Docker
//! engine, driven through the public APIs only (issue 3, "What must be shown" 1-8, and bad input).
//!
//! Every test has its own controller (data directory, port), its own boards (ids, data
//! directories, host ports) and removes its containers. At most two racks run at once, so the
//! shared machine is not overloaded. Timeouts are generous upper bounds; nothing sleeps and hopes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use api::InstancePhase;
use api::rack::{BoardState, ClaimState, InstanceState, InstanceView, RackEvent, RackEventBody};
use e2e::controller::{
    BROKER_TOKEN, Controller, GARBAGE_BODIES, OPERATOR_TOKEN, Rack, RackBoard, by_state, sim_deployment,
    wait_instances,
};
use e2e::stream::{Player, hello, play};
use e2e::{TestDir, board_containers, docker_inspect, ensure_image, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEPLOYMENT: &str = "game-a";

/// At most two racks (a controller, daemons and containers each) at once on this machine.
static RACKS: Semaphore = Semaphore::const_new(2);

async fn rack_slot() -> SemaphorePermit<'static> {
    ensure_image();
    RACKS.acquire().await.expect("the semaphore is never closed")
}

/// Starts a rack of `boards` boards with deployment [`DEPLOYMENT`] of `pool` instances, and
/// waits until all are ready.
async fn rack_with_pool(name: &str, boards: usize, pool: u32, extra: &[&str]) -> (Rack, Vec<InstanceView>) {
    let rack = Rack::start(name, boards, extra).await;
    let view = rack.client().put_deployment(DEPLOYMENT, &sim_deployment(pool)).await.expect("PUT deployment");
    assert_eq!(view.spec.pool_size, pool);
    let started = Instant::now();
    let ready = rack.wait_ready(DEPLOYMENT, pool as usize, READY_TIMEOUT).await;
    println!("{name}: {pool} instances ready {:?} after the PUT", started.elapsed());
    (rack, ready)
}

/// Container ids of the board's containers as Docker holds them, running or not.
fn containers_of(board: &str) -> BTreeSet<String> {
    board_containers(board).into_iter().collect()
}

fn is_running(container: &str) -> bool {
    docker_inspect(container)["State"]["Running"] == Value::Bool(true)
}

// 1. Three daemons enrol with a join token; six instances are packed over them and all reach
// ready through the daemons' ADB checks.
#[tokio::test]
async fn three_boards_enrol_and_six_instances_are_packed_over_them_and_become_ready_through_adb() {
    let _slot = rack_slot().await;
    let (rack, ready) = rack_with_pool("ac-pack", 3, 6, &[]).await;
    let client = rack.client();

    let boards = client.boards().await;
    assert_eq!(boards.len(), 3, "{boards:#?}");
    for board in &boards {
        assert_eq!(board.state, BoardState::Ready, "{board:#?}");
        assert_eq!(board.class.as_deref(), Some("x86-sim"), "{board:#?}");
        assert!(board.reachable && board.reason.is_none(), "{board:#?}");
    }

    let mut per_board: BTreeMap<&str, Vec<&InstanceView>> = BTreeMap::new();
    for instance in &ready {
        per_board.entry(instance.board.as_str()).or_default().push(instance);
    }
    assert_eq!(per_board.len(), 3, "every board gets instances: {ready:#?}");
    let mut host_ports = BTreeSet::new();
    for (board_id, instances) in &per_board {
        let rack_board = rack.boards.iter().find(|b| b.id() == *board_id).expect("a board of this rack");
        let status = rack_board.daemon().client.status().await;
        let containers = containers_of(board_id);
        for instance in instances {
            // The daemon's own view: ready (it asked Android over ADB), same container.
            let seen = e2e::instance(&status, &instance.id)
                .unwrap_or_else(|| panic!("{} not on its board's status {status:#?}", instance.id));
            assert_eq!(seen.phase, InstancePhase::Ready, "{seen:#?}");
            let container = instance.container_id.clone().expect("a ready instance has a container");
            assert_eq!(seen.container_id.as_ref(), Some(&container));
            assert!(containers.contains(&container) && is_running(&container), "{container} runs in Docker");
            assert!(seen.boot.booted_ms.is_some(), "the daemon saw Android boot: {seen:#?}");
            assert!(
                rack_board.board.ports.start() <= instance.ports.adb
                    && instance.ports.adb <= rack_board.board.ports.end()
            );
            assert!(host_ports.insert(instance.ports.adb) && host_ports.insert(instance.ports.stream));
        }
        assert_eq!(containers.len(), instances.len(), "{board_id} runs only its instances");
    }
    let deployment = client.deployment(DEPLOYMENT).await;
    assert_eq!(deployment.instances, BTreeMap::from([("ready".to_string(), 6)]));
}

// 2. Fifty concurrent claims for six ready instances: exactly six win, each a different
// instance; the same key gets the same instance again; a claimed instance streams to a player.
#[tokio::test]
async fn fifty_concurrent_claims_get_exactly_the_six_ready_instances_once_each() {
    let _slot = rack_slot().await;
    let (rack, ready) = rack_with_pool("ac-claims", 3, 6, &[]).await;
    let client = rack.client().clone();

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("session-{i}");
                let answer = client.claim(DEPLOYMENT, &key, None).await;
                (key, answer)
            })
        })
        .collect();
    let mut won = BTreeMap::new();
    let mut refused = 0;
    for task in tasks {
        let (key, answer) = task.await.expect("claim task");
        match answer {
            Ok(claim) => {
                assert_eq!((claim.key.as_str(), claim.state), (key.as_str(), ClaimState::Active));
                won.insert(key, claim);
            }
            Err(err) => {
                assert_eq!((err.status, err.code.as_str()), (409, "no_ready_instance"), "{key}: {err:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((won.len(), refused), (6, 44), "{won:#?}");
    let instances: BTreeSet<&str> = won.values().map(|c| c.instance.as_str()).collect();
    assert_eq!(instances.len(), 6, "no instance is claimed twice: {won:#?}");
    let ready_ids: BTreeSet<&str> = ready.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(instances, ready_ids);

    // What the controller reports agrees: six claimed, each by the key that won it.
    let now = client.instances(DEPLOYMENT).await;
    assert_eq!(by_state(&now), BTreeMap::from([("claimed".to_string(), 6)]));
    for instance in &now {
        let key = instance.claim_key.as_deref().expect("a claimed instance names its key");
        assert_eq!(won[key].instance, instance.id);
        assert_eq!(won[key].ports, instance.ports);
        assert_eq!(won[key].board, instance.board);
    }

    // Repeating a claim with the same key answers the same claim; a new key still gets none.
    for (key, claim) in &won {
        let again = client.claim(DEPLOYMENT, key, None).await.expect("a repeated claim succeeds");
        assert_eq!(
            (&again.instance, &again.board, again.ports),
            (&claim.instance, &claim.board, claim.ports)
        );
        assert_eq!(client.get_claim(key).await.expect("GET claim").instance, claim.instance);
    }
    let late = client.claim(DEPLOYMENT, "session-late", None).await.expect_err("nothing left");
    assert_eq!(late.code, "no_ready_instance");

    // The claim answer is all a player needs.
    let (_, claim) = won.iter().next().unwrap();
    assert_eq!(claim.host, "127.0.0.1");
    let token = claim.stream_token.as_deref().expect("a claim carries its instance's stream token");
    let ok = play(&claim.host, claim.ports.stream, token, 3).await;
    println!("player on {} got {ok:?} and 3 frames", claim.instance);
}

/// The instance `id` of `deployment`, as the controller reports it now.
async fn instance_view(rack: &Rack, id: &str) -> InstanceView {
    let list = rack.client().instances(DEPLOYMENT).await;
    list.into_iter().find(|i| i.id == id).unwrap_or_else(|| panic!("instance {id} is gone"))
}

/// Waits until instance `id` is ready again on a new container (generation above `generation`);
/// checks the old container is gone from Docker and the board's daemon agrees.
async fn wait_recycled(rack: &Rack, id: &str, generation: u64, old_container: &str) -> InstanceView {
    let client = rack.client();
    let what = format!("{id} to come back ready on a new container");
    let list = wait_instances(client, DEPLOYMENT, READY_TIMEOUT, &what, |list| {
        list.iter().any(|i| {
            i.id == id
                && i.state == InstanceState::Ready
                && i.generation > generation
                && i.container_id.as_deref().is_some_and(|c| c != old_container)
        })
    })
    .await;
    let instance = list.into_iter().find(|i| i.id == id).unwrap();
    assert!(instance.claim_key.is_none(), "{instance:#?}");
    let new_container = instance.container_id.clone().unwrap();
    assert!(is_running(&new_container), "the new container runs");
    assert!(e2e::try_docker_inspect(old_container).is_none(), "the old container {old_container} is removed");
    let board = rack.boards.iter().find(|b| b.id() == instance.board).unwrap();
    let status = board.daemon().client.status().await;
    let seen = e2e::instance(&status, id).expect("the board reports the instance");
    assert_eq!((seen.phase, seen.container_id.as_ref()), (InstancePhase::Ready, Some(&new_container)));
    instance
}

// 3. A released instance is recreated (new container, next generation) and comes back ready; an
// unrenewed lease lapses and recycles its instance the same way; a renewed one does not.
#[tokio::test]
async fn released_and_lapsed_claims_recycle_their_instance_and_a_renewed_lease_holds() {
    let _slot = rack_slot().await;
    let (rack, _) = rack_with_pool("ac-release", 2, 3, &[]).await;
    let client = rack.client();

    // Release.
    let claim = client.claim(DEPLOYMENT, "released", None).await.expect("claim");
    let before = instance_view(&rack, &claim.instance).await;
    assert_eq!((before.state, before.claim_key.as_deref()), (InstanceState::Claimed, Some("released")));
    let old_container = before.container_id.clone().unwrap();
    let released = client.release("released").await.expect("release");
    assert_eq!(released.state, ClaimState::Released);
    let after = wait_recycled(&rack, &claim.instance, before.generation, &old_container).await;
    assert_eq!(after.generation, before.generation + 1, "{after:#?}");
    assert_eq!((after.board.as_str(), after.ports), (before.board.as_str(), before.ports));
    // Releasing again changes nothing; the ended claim is still readable.
    assert_eq!(client.release("released").await.expect("release again").state, ClaimState::Released);

    // A short lease that is not renewed lapses; one that is renewed holds.
    let lapsing = client.claim(DEPLOYMENT, "lapsing", Some(1500)).await.expect("claim lapsing");
    let renewed = client.claim(DEPLOYMENT, "renewed", Some(1500)).await.expect("claim renewed");
    let lapsing_before = instance_view(&rack, &lapsing.instance).await;
    let renewed_before = instance_view(&rack, &renewed.instance).await;
    let claimed_at = Instant::now();
    let renewer = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let answer = client.renew(&["renewed", "lapsing-unknown"], 1500).await;
                assert!(answer.renewed.contains_key("renewed"), "{answer:?}");
                assert_eq!(answer.missing, vec!["lapsing-unknown".to_string()]);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let lapsed_container = lapsing_before.container_id.clone().unwrap();
    let after = wait_recycled(&rack, &lapsing.instance, lapsing_before.generation, &lapsed_container).await;
    let lapsed = client.get_claim("lapsing").await.expect("the lapsed claim is readable");
    assert_eq!(lapsed.state, ClaimState::Expired);
    assert!(claimed_at.elapsed() >= Duration::from_millis(1500), "lapsed early: {:?}", claimed_at.elapsed());
    println!(
        "lease of 1500 ms lapsed and the instance was ready again {:?} after the claim",
        claimed_at.elapsed()
    );
    assert_eq!(after.generation, lapsing_before.generation + 1);
    // Keep renewing well past a lease length more.
    wait_until(Duration::from_secs(10), "4 s of renewals", || async {
        if claimed_at.elapsed() >= Duration::from_secs(4) { Ok(()) } else { Err(claimed_at.elapsed()) }
    })
    .await;
    renewer.abort();
    let held = client.get_claim("renewed").await.expect("renewed claim");
    assert_eq!((held.state, held.instance.as_str()), (ClaimState::Active, renewed.instance.as_str()));
    let still = instance_view(&rack, &renewed.instance).await;
    assert_eq!(
        (still.state, still.claim_key.as_deref(), still.generation, &still.container_id),
        (InstanceState::Claimed, Some("renewed"), renewed_before.generation, &renewed_before.container_id)
    );
}

// 3b. Stream tokens: a claim answers the token of its instance, whose stream takes that token
// only. A release recreates the instance with a new token: the old one is refused, and the next
// claim's works. Tokens are in no list and no event.
#[tokio::test]
async fn a_claims_stream_token_admits_its_player_only_and_a_recycled_instance_takes_the_next_claims() {
    let _slot = rack_slot().await;
    let (rack, _) = rack_with_pool("ac-token", 1, 1, &[]).await;
    let client = rack.client();

    let claim = client.claim(DEPLOYMENT, "first", None).await.expect("claim");
    let token = claim.stream_token.clone().expect("a claim carries its instance's stream token");
    assert!(token.starts_with("st_"), "{token}");
    assert_eq!(client.get_claim("first").await.expect("GET claim").stream_token.as_ref(), Some(&token));
    let port = claim.ports.stream;
    assert_eq!(hello(&claim.host, port, "st_made_up").await, "ERR bad_token");
    let mut player = Player::connect(&claim.host, port, &token).await;
    assert!(player.accepted(), "{:?}", player.reply);
    player.frames(3).await;

    let before = instance_view(&rack, &claim.instance).await;
    let released = client.release("first").await.expect("release");
    // The ended claim carries no token: its instance's new one is the next claim's.
    assert_eq!((released.state, released.stream_token), (ClaimState::Released, None));
    // Recreating the container ends the stream.
    player.wait_ended(READY_TIMEOUT).await;
    let old_container = before.container_id.clone().unwrap();
    wait_recycled(&rack, &claim.instance, before.generation, &old_container).await;
    assert_eq!(hello(&claim.host, port, &token).await, "ERR bad_token", "the old token is refused");

    let next = client.claim(DEPLOYMENT, "second", None).await.expect("claim the recycled instance");
    assert_eq!(next.instance, claim.instance);
    let next_token = next.stream_token.clone().expect("a token");
    assert_ne!(next_token, token, "a recycled instance has a new token");
    let mut player = Player::connect(&next.host, next.ports.stream, &next_token).await;
    assert!(player.accepted(), "{:?}", player.reply);
    player.frames(3).await;
    assert_eq!(hello(&next.host, port, &token).await, "ERR bad_token");

    // Secrets stay out of lists and the event log.
    let listed = serde_json::to_string(&client.instances(DEPLOYMENT).await).unwrap();
    let events =
        serde_json::to_string(&client.events_until_quiet(None, Duration::from_millis(500)).await).unwrap();
    for secret in [&token, &next_token] {
        assert!(!listed.contains(secret.as_str()) && !events.contains(secret.as_str()));
    }
}

// 4. The controller is SIGKILLed while claims are in flight and started again on the same data:
// every answered claim is still there with the same instance, none is doubled, and the rack
// converges.
#[tokio::test]
async fn claims_answered_before_a_controller_sigkill_survive_its_restart_and_none_is_doubled() {
    let _slot = rack_slot().await;
    let (mut rack, _) = rack_with_pool("ac-crash", 3, 6, &[]).await;
    let client = rack.client().clone();

    // Four workers claim with fresh keys in a loop, paced, until the controller stops answering.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let (first_win, mut wins) = tokio::sync::watch::channel(0usize);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (client, answered, first_win) = (client.clone(), answered.clone(), first_win.clone());
            tokio::spawn(async move {
                let mut unanswered = Vec::new();
                for n in 0.. {
                    let key = format!("crash-{w}-{n}");
                    match client.try_claim(DEPLOYMENT, &key, Some(60_000)).await {
                        Ok(Ok(claim)) => {
                            answered.lock().unwrap().insert(key, claim);
                            first_win.send_modify(|n| *n += 1);
                        }
                        Ok(Err(err)) => assert_eq!(err.code, "no_ready_instance", "{key}: {err:?}"),
                        Err(_) => {
                            unanswered.push(key);
                            return unanswered;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(40 * (w + 1))).await;
                }
                unanswered
            })
        })
        .collect();
    drop(first_win);
    wins.wait_for(|n| *n >= 2).await.expect("two claims are answered");
    rack.controller.kill();
    let mut unanswered = Vec::new();
    for worker in workers {
        unanswered.extend(worker.await.expect("claim worker"));
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    println!("before the SIGKILL: {} claims answered, {unanswered:?} unanswered", answered.len());
    assert!(answered.len() >= 2 && answered.len() < 6, "the SIGKILL came in the middle: {answered:#?}");

    rack.controller.restart().await;
    for (key, claim) in &answered {
        let now = client.get_claim(key).await.unwrap_or_else(|e| panic!("claim {key} lost: {e:?}"));
        assert_eq!(
            (now.state, &now.instance, &now.board),
            (ClaimState::Active, &claim.instance, &claim.board)
        );
    }
    // A request cut off by the SIGKILL either committed whole or not at all.
    for key in &unanswered {
        if let Ok(claim) = client.get_claim(key).await {
            let instance = instance_view(&rack, &claim.instance).await;
            assert_eq!(instance.claim_key.as_deref(), Some(key.as_str()), "{instance:#?}");
        }
    }
    // Claim what is left with new keys until none is ready: six claims in all, each its own
    // instance, and each claimed instance names exactly the key that holds it.
    let all = wait_instances(
        &client,
        DEPLOYMENT,
        READY_TIMEOUT,
        "the rack to converge after the restart",
        |list| {
            list.len() == 6
                && list.iter().all(|i| matches!(i.state, InstanceState::Ready | InstanceState::Claimed))
        },
    )
    .await;
    let ready = all.iter().filter(|i| i.state == InstanceState::Ready).count();
    for n in 0..ready {
        client.claim(DEPLOYMENT, &format!("after-{n}"), None).await.expect("a ready instance is claimable");
    }
    assert_eq!(
        client.claim(DEPLOYMENT, "after-none", None).await.expect_err("all claimed").code,
        "no_ready_instance"
    );
    let all = client.instances(DEPLOYMENT).await;
    assert_eq!(by_state(&all), BTreeMap::from([("claimed".to_string(), 6)]));
    let keys: BTreeSet<&str> = all.iter().map(|i| i.claim_key.as_deref().expect("claimed")).collect();
    assert_eq!(keys.len(), 6, "no key holds two instances: {all:#?}");
    for instance in &all {
        let key = instance.claim_key.as_deref().unwrap();
        let claim = client.get_claim(key).await.expect("the holder's claim");
        assert_eq!((claim.state, claim.instance.as_str()), (ClaimState::Active, instance.id.as_str()));
        if let Some(before) = answered.get(key) {
            assert_eq!(before.instance, instance.id);
        }
    }
    for board in rack.client().boards().await {
        assert!(board.reachable, "{board:#?}");
    }
}

/// Container ids of each instance of the deployment, from the controller.
fn containers_by_instance(list: &[InstanceView]) -> BTreeMap<String, String> {
    list.iter().map(|i| (i.id.clone(), i.container_id.clone().expect("a container"))).collect()
}

/// Board journal entries in the `board_report` events of `events`, per board, in event order.
fn reports(events: &[RackEvent]) -> BTreeMap<String, Vec<api::JournalEntry>> {
    let mut per_board: BTreeMap<String, Vec<api::JournalEntry>> = BTreeMap::new();
    for event in events {
        if let RackEventBody::BoardReport { board, entry } = &event.body {
            per_board.entry(board.clone()).or_default().push(entry.clone());
        }
    }
    per_board
}

// 5. While the controller is away the daemons keep every container; a daemon SIGKILLed and
// restarted meanwhile adopts its containers; when the controller returns nothing is deleted and
// the boards' queued journal entries arrive, in order.
#[tokio::test]
async fn without_the_controller_boards_keep_and_adopt_their_containers_and_replay_their_journal_in_order() {
    let _slot = rack_slot().await;
    let (mut rack, ready) = rack_with_pool("ac-away", 2, 4, &[]).await;
    let client = rack.client().clone();
    let containers = containers_by_instance(&ready);
    let docker_before: BTreeMap<String, BTreeSet<String>> =
        rack.board_ids().iter().map(|b| (b.clone(), containers_of(b))).collect();

    rack.controller.kill();
    let away_since = Instant::now();

    // A SIGKILLed daemon restarted while the controller is away adopts its containers.
    let restarted = rack.boards[0].id().to_string();
    rack.boards[0].kill();
    rack.boards[0].start().await;
    let journal_while_away = {
        let daemon = &rack.boards[0].daemon().client;
        let expected: Vec<&InstanceView> = ready.iter().filter(|i| i.board == restarted).collect();
        wait_until(READY_TIMEOUT, "the restarted daemon to adopt its instances", || async {
            let status = daemon.try_status().await?;
            let adopted = expected.iter().all(|i| {
                e2e::instance(&status, &i.id).is_some_and(|s| {
                    s.phase == InstancePhase::Ready && s.container_id.as_ref() == i.container_id.as_ref()
                })
            });
            if adopted { Ok(()) } else { Err(format!("{status:#?}")) }
        })
        .await;
        daemon.journal(0).await
    };
    assert!(!journal_while_away.is_empty(), "the restarted daemon journals its adoption");

    // Every daemon keeps every container running for a while (many heartbeat periods) alone.
    let boards = &rack.boards;
    wait_until(Duration::from_secs(20), "3 s without the controller", || async {
        for board in boards {
            let status = board.daemon().client.try_status().await?;
            for instance in ready.iter().filter(|i| i.board == board.id()) {
                let seen = e2e::instance(&status, &instance.id).ok_or("instance missing")?;
                assert_eq!(seen.container_id.as_ref(), instance.container_id.as_ref(), "{seen:#?}");
                assert_eq!(seen.phase, InstancePhase::Ready, "{seen:#?}");
            }
            assert_eq!(
                containers_of(board.id()),
                docker_before[board.id()],
                "{} kept its containers",
                board.id()
            );
        }
        if away_since.elapsed() >= Duration::from_secs(3) { Ok(()) } else { Err("still waiting".to_string()) }
    })
    .await;
    for container in containers.values() {
        assert!(is_running(container), "{container} runs");
    }

    rack.controller.restart().await;
    let ids = rack.board_ids();
    rack.wait_boards(&ids, |b| b.reachable && b.state == BoardState::Ready, "reachable again").await;
    let list = rack.wait_ready(DEPLOYMENT, 4, READY_TIMEOUT).await;
    assert_eq!(containers_by_instance(&list), containers, "no instance changed container");
    // Let a few more heartbeats go by: still nothing deleted.
    let back = Instant::now();
    wait_until(Duration::from_secs(20), "2 s after the return", || async {
        let list = client.try_instances(DEPLOYMENT).await?;
        assert_eq!(containers_by_instance(&list), containers);
        if back.elapsed() >= Duration::from_secs(2) { Ok(()) } else { Err("waiting".to_string()) }
    })
    .await;
    for (board, before) in &docker_before {
        assert_eq!(&containers_of(board), before, "{board} lost or gained containers");
    }

    // The event log holds the boards' journals in order, the restarted board's entries made
    // while the controller was away included.
    let events = client.events_until_quiet(None, Duration::from_millis(1500)).await;
    let reports = reports(&events);
    for (board, entries) in &reports {
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{board}: journal out of order or repeated: {seqs:?}");
    }
    let replayed = &reports[&restarted];
    for entry in &journal_while_away {
        assert!(
            replayed.contains(entry),
            "entry {entry:?} made while the controller was away did not arrive"
        );
    }
    println!(
        "{} board_report events; {restarted} replayed {} entries made while away",
        reports.values().map(Vec::len).sum::<usize>(),
        journal_while_away.len()
    );
}

// 6. A board whose daemon is stopped becomes unreachable; after the grace period its idle
// instances are re-placed on the other boards, and the pool is full again.
#[tokio::test]
async fn an_unreachable_boards_idle_instances_are_replaced_on_the_other_boards() {
    let _slot = rack_slot().await;
    let flags = ["--unreachable-after-ms", "2000", "--replace-after-ms", "1000"];
    let (mut rack, ready) = rack_with_pool("ac-lost", 3, 6, &flags).await;
    let client = rack.client().clone();
    let lost = rack.boards[2].id().to_string();
    let on_lost: BTreeSet<String> = ready.iter().filter(|i| i.board == lost).map(|i| i.id.clone()).collect();
    let kept: BTreeMap<String, String> =
        containers_by_instance(&ready).into_iter().filter(|(id, _)| !on_lost.contains(id)).collect();
    assert!(!on_lost.is_empty(), "the spread policy put instances on {lost}: {ready:#?}");

    rack.boards[2].kill();
    let stopped = Instant::now();
    let views = rack.wait_boards(std::slice::from_ref(&lost), |b| !b.reachable, "unreachable").await;
    let unreachable_after = stopped.elapsed();
    let view = views.iter().find(|b| b.id == lost).unwrap();
    println!("{lost} unreachable {unreachable_after:?} after its daemon stopped (state {:?})", view.state);
    assert!(unreachable_after >= Duration::from_millis(1500), "unreachable too early: {unreachable_after:?}");
    for other in &rack.board_ids()[..2] {
        assert!(client.board(other).await.reachable, "{other} is still reachable");
    }

    let what = "six ready instances on the remaining boards";
    let list = wait_instances(&client, DEPLOYMENT, READY_TIMEOUT, what, |list| {
        list.iter().filter(|i| i.state == InstanceState::Ready && i.board != lost).count() == 6
    })
    .await;
    println!("pool full again on the remaining boards {:?} after the daemon stopped", stopped.elapsed());
    let live: Vec<&InstanceView> = list.iter().filter(|i| i.board != lost).collect();
    assert_eq!(live.len(), 6, "{list:#?}");
    for instance in list.iter().filter(|i| i.board == lost) {
        assert!(
            on_lost.contains(&instance.id) && matches!(instance.state, InstanceState::Terminating),
            "only the lost board's old instances are left there, terminating: {instance:#?}"
        );
    }
    // The instances on the healthy boards were left alone.
    for (id, container) in &kept {
        let instance = live.iter().find(|i| &i.id == id).unwrap_or_else(|| panic!("{id} was moved"));
        assert_eq!(instance.container_id.as_ref(), Some(container));
    }
    for board in &rack.boards[..2] {
        let status = board.daemon().client.status().await;
        for instance in live.iter().filter(|i| i.board == board.id()) {
            let seen = e2e::instance(&status, &instance.id).expect("on its board");
            assert_eq!(seen.phase, InstancePhase::Ready);
        }
    }
    let deployment = client.deployment(DEPLOYMENT).await;
    assert_eq!(deployment.instances.get("ready"), Some(&6), "{deployment:#?}");
}

fn seqs(events: &[RackEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

// 7. A subscriber that disconnects and resumes with Last-Event-ID gets every event once: those
// made while it was away and the live ones after, with no gap and no repeat.
#[tokio::test]
async fn an_event_subscriber_resuming_with_last_event_id_gets_every_event_exactly_once() {
    let _slot = rack_slot().await;
    let (rack, _) = rack_with_pool("ac-events", 1, 2, &[]).await;
    let client = rack.client();
    let board = rack.board_ids()[0].clone();

    // First connection: everything so far, then one live event.
    let mut stream = client.events(None).await;
    let mut first = Vec::new();
    while let Some(event) = stream.next_rack_event(Duration::from_millis(1000)).await {
        first.push(event);
    }
    client.cordon(&board, true).await;
    // The live cordon event, after any events still flowing.
    let live = loop {
        let event = stream.next_rack_event(Duration::from_secs(10)).await.expect("the live cordon event");
        first.push(event.clone());
        if matches!(&event.body, RackEventBody::Board { cordoned: true, .. }) {
            break event;
        }
    };
    drop(stream);
    let last_seen = first.last().unwrap().seq;
    assert_eq!(live.seq, last_seen);
    assert_eq!(
        seqs(&first),
        (1..=last_seen).collect::<Vec<_>>(),
        "the first connection saw every event once"
    );

    // While disconnected: board, deployment, claim and instance events.
    client.cordon(&board, false).await;
    let claim = client.claim(DEPLOYMENT, "ev-1", None).await.expect("claim");
    client.release("ev-1").await.expect("release");
    client.put_deployment(DEPLOYMENT, &sim_deployment(3)).await.expect("PUT deployment (pool 2 -> 3)");
    rack.wait_ready(DEPLOYMENT, 3, READY_TIMEOUT).await;

    // Resume: the missed events first, then a live one; nothing seen before comes again.
    let mut stream = client.events(Some(last_seen)).await;
    let mut resumed = Vec::new();
    while let Some(event) = stream.next_rack_event(Duration::from_millis(1500)).await {
        resumed.push(event);
    }
    client.cordon(&board, true).await;
    let live = loop {
        let event =
            stream.next_rack_event(Duration::from_secs(10)).await.expect("a live event after the catch-up");
        resumed.push(event.clone());
        if matches!(&event.body, RackEventBody::Board { cordoned: true, .. }) {
            break event;
        }
    };
    while let Some(event) = stream.next_rack_event(Duration::from_millis(500)).await {
        resumed.push(event);
    }
    assert_eq!(resumed.iter().filter(|e| e.seq == live.seq).count(), 1, "the live event came once");
    let last = resumed.last().unwrap().seq;
    assert_eq!(
        seqs(&resumed),
        (last_seen + 1..=last).collect::<Vec<_>>(),
        "no gap, no repeat after the resume"
    );
    assert!(
        resumed.iter().any(
            |e| matches!(&e.body, RackEventBody::Claim { key, instance, state: ClaimState::Released, .. }
            if key == "ev-1" && *instance == claim.instance)
        ),
        "the release made while away arrives"
    );
    assert!(resumed.iter().any(|e| matches!(&e.body, RackEventBody::Board { cordoned: false, .. })));

    // A fresh subscriber from the start reads the very same events.
    let all = client.events_until_quiet(None, Duration::from_millis(1500)).await;
    let mut both = first.clone();
    both.extend(resumed.iter().cloned());
    assert_eq!(all[..both.len().min(all.len())], both[..], "the resumed view equals the log");
    println!("{} events before the disconnect, {} after the resume", first.len(), resumed.len());

    // A subscriber asking for some kinds gets exactly those events of the log, in order, and
    // resumes after the last one it got without seeing the skipped ones.
    let of_kinds = |kinds: &[&str], events: &[RackEvent]| -> Vec<RackEvent> {
        events.iter().filter(|e| kinds.contains(&e.body.kind())).cloned().collect()
    };
    let mut stream = client.events_of_kinds("claim,board", None).await;
    let mut filtered = Vec::new();
    while let Some(event) = stream.next_rack_event(Duration::from_millis(1500)).await {
        filtered.push(event);
    }
    assert_eq!(filtered, of_kinds(&["claim", "board"], &all), "claim and board events only");
    assert!(
        filtered.iter().any(|e| e.body.kind() == "claim")
            && filtered.iter().any(|e| e.body.kind() == "board")
    );
    let cut = filtered.iter().position(|e| e.body.kind() == "claim").expect("a claim event");
    let mut stream = client.events_of_kinds("claim,board", Some(filtered[cut].seq)).await;
    let mut rest = Vec::new();
    while let Some(event) = stream.next_rack_event(Duration::from_millis(1500)).await {
        rest.push(event);
    }
    assert_eq!(rest, filtered[cut + 1..], "resumed after the last event it got");

    // Unknown or empty kinds are refused with a code, for the whole request.
    for query in ["kinds=claim,nonsense", "kinds=", "kinds=claim,,board"] {
        let answer = client
            .request(Method::GET, &format!("/v1/events?{query}"), Some(OPERATOR_TOKEN), None)
            .await
            .expect("GET /v1/events");
        assert_eq!(answer.status, 400, "{query}: {answer:?}");
        assert_eq!(answer.code(), "invalid_kind", "{query}: {answer:?}");
    }
}

// 8. A board whose facts lack binder, of a class that runs real Android, is quarantined with a
// reason naming binder, and gets no instances while an x86 board gets them all.
#[tokio::test]
async fn a_board_without_binder_is_quarantined_says_why_and_gets_no_instances() {
    let _slot = rack_slot().await;
    let dir = TestDir::new("ac-quarantine");
    let controller = Controller::start(dir.path(), &[]).await;
    let client = &controller.client;
    let join = client.join_token().await;
    let facts = json!({
        "arch": "aarch64",
        "soc_model": "rockchip,rk3588",
        "memory_mib": 15900,
        "kernel": {
            "release": "5.10.160-rockchip",
            "page_size": 4096,
            "binderfs": false,
            "binder_devices": [],
            "memfd": true,
            "ashmem": false,
            "inotify_max_user_instances": 8192,
            "inotify_max_user_watches": 524288
        }
    });
    let mut arm = RackBoard::new("ac-quar-arm", 0, &controller.url(), &join, Some(&facts));
    let mut x86 = RackBoard::new("ac-quar-x86", 1, &controller.url(), &join, None);
    arm.start().await;
    x86.start().await;

    let ids = [arm.id().to_string(), x86.id().to_string()];
    let boards = wait_until(Duration::from_secs(30), "both boards enrolled", || async {
        let answer = client.request(Method::GET, "/v1/boards", Some(OPERATOR_TOKEN), None).await?;
        let boards: Vec<api::rack::BoardView> =
            serde_json::from_value(answer.body).map_err(|e| e.to_string())?;
        if ids.iter().all(|id| boards.iter().any(|b| &b.id == id && b.reachable)) {
            Ok(boards)
        } else {
            Err(format!("{boards:?}"))
        }
    })
    .await;
    let quarantined = boards.iter().find(|b| b.id == ids[0]).unwrap();
    assert_eq!(quarantined.state, BoardState::Quarantined, "{quarantined:#?}");
    assert_eq!(quarantined.class.as_deref(), Some("rk3588-16g"));
    let reason = quarantined.reason.clone().expect("a quarantined board says why");
    assert!(reason.contains("binder"), "the reason names binder: {reason}");
    println!("quarantined: {reason}");
    let healthy = boards.iter().find(|b| b.id == ids[1]).unwrap();
    assert_eq!((healthy.state, healthy.class.as_deref()), (BoardState::Ready, Some("x86-sim")));

    // A deployment with images for both architectures: everything lands on the x86 board.
    client.put_deployment(DEPLOYMENT, &sim_deployment(3)).await.expect("PUT deployment");
    let list = wait_instances(client, DEPLOYMENT, READY_TIMEOUT, "3 ready instances", |list| {
        list.len() == 3 && list.iter().all(|i| i.state == InstanceState::Ready)
    })
    .await;
    assert!(list.iter().all(|i| i.board == ids[1]), "{list:#?}");
    assert_eq!(client.board(&ids[0]).await.instances, 0);
    assert!(arm.daemon().client.status().await.instances.is_empty(), "the quarantined board runs nothing");
    assert!(containers_of(&ids[0]).is_empty());
    // Only aarch64 images: no board can take it, and the controller says why.
    let mut arm_only = sim_deployment(1);
    arm_only["images"] = json!({"aarch64": e2e::SIM_IMAGE});
    client.put_deployment("arm-only", &arm_only).await.expect("PUT arm-only");
    let events = wait_until(Duration::from_secs(20), "a placement failure for arm-only", || async {
        let events = client.events_until_quiet(None, Duration::from_millis(500)).await;
        let failed = events.iter().any(|e| matches!(&e.body, RackEventBody::PlacementFailed { deployment, .. } if deployment == "arm-only"));
        if failed { Ok(events) } else { Err(events.len()) }
    })
    .await;
    let reasons: Vec<&Vec<String>> = events
        .iter()
        .filter_map(|e| match &e.body {
            RackEventBody::PlacementFailed { deployment, reasons } if deployment == "arm-only" => {
                Some(reasons)
            }
            _ => None,
        })
        .collect();
    println!("arm-only placement failed: {:?}", reasons.last());
    assert!(client.instances("arm-only").await.iter().all(|i| i.board != ids[0]));
    drop((arm, x86, controller, dir));
}

/// Boards, deployments and the event log as they are now.
async fn rack_state(client: &e2e::controller::ControllerClient) -> (Value, Value, Vec<u64>) {
    let boards = client.request(Method::GET, "/v1/boards", Some(OPERATOR_TOKEN), None).await.unwrap().body;
    let deployments =
        client.request(Method::GET, "/v1/deployments", Some(OPERATOR_TOKEN), None).await.unwrap().body;
    let events = client.events_until_quiet(None, Duration::from_millis(500)).await;
    (boards, deployments, seqs(&events))
}

// Bad input gets a 4xx with a stable code and changes nothing.
#[tokio::test]
async fn bad_input_gets_a_stable_4xx_code_and_changes_nothing() {
    let dir = TestDir::new("ac-bad");
    let controller = Controller::start(dir.path(), &[]).await;
    let client = &controller.client;
    let good = sim_deployment(0);
    client.put_deployment("existing", &good).await.expect("a valid deployment is accepted");
    let before = rack_state(client).await;

    let post = |path: &'static str, token: Option<&'static str>, body: Value| async move {
        client.request(Method::POST, path, token, Some(body.to_string())).await.expect("an answer")
    };
    let expect = |answer: e2e::controller::Answer, status: u16, code: &str| {
        assert_eq!((answer.status, answer.code()), (status, code), "{answer:?}");
        assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
    };

    // Credentials.
    let get = |path: &'static str, token: Option<&'static str>| async move {
        client.request(Method::GET, path, token, None).await.expect("an answer")
    };
    expect(get("/v1/boards", None).await, 401, "unauthorized");
    expect(get("/v1/boards", Some("not-a-token")).await, 401, "unauthorized");
    expect(post("/v1/join-tokens", Some(BROKER_TOKEN), json!({})).await, 403, "forbidden");
    expect(
        post("/v1/claims", None, json!({"deployment": "existing", "key": "k"})).await,
        401,
        "unauthorized",
    );

    // Bodies.
    let mut unknown_field = good.clone();
    unknown_field["colour"] = json!("red");
    let answer = client
        .request(Method::PUT, "/v1/deployments/new", Some(OPERATOR_TOKEN), Some(unknown_field.to_string()))
        .await
        .unwrap();
    expect(answer, 400, "invalid_body");
    let answer = client
        .request(Method::PUT, "/v1/deployments/new", Some(OPERATOR_TOKEN), Some("{not json".into()))
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    let mut changed = good.clone();
    changed["pool_size"] = json!(5);
    changed["extra"] = json!(1);
    let answer = client
        .request(Method::PUT, "/v1/deployments/existing", Some(OPERATOR_TOKEN), Some(changed.to_string()))
        .await
        .unwrap();
    expect(answer, 400, "invalid_body");

    // Claims.
    let claim = client.claim("no-such-game", "k1", None).await.expect_err("unknown deployment");
    assert_eq!((claim.status, claim.code.as_str()), (404, "not_found"), "{claim:?}");
    let claim = client.claim("existing", "k2", Some(10)).await.expect_err("lease too short");
    assert_eq!((claim.status, claim.code.as_str()), (400, "invalid_lease"), "{claim:?}");
    let claim = client.claim("existing", "has space", None).await.expect_err("bad key");
    assert_eq!((claim.status, claim.code.as_str()), (400, "invalid_key"), "{claim:?}");
    expect(
        post("/v1/claims", Some(BROKER_TOKEN), json!({"deployment": "existing"})).await,
        400,
        "invalid_body",
    );
    let release = client.release("never-claimed").await.expect_err("unknown claim");
    assert_eq!((release.status, release.code.as_str()), (404, "not_found"));

    // Enrolment with a join token nobody issued.
    let enrol = enrol_body("e2e-intruder", "made-up-token");
    expect(post("/v1/enrol", None, enrol).await, 401, "invalid_join_token");

    // Unknown endpoints and query parameters.
    expect(get("/v1/nothing-here", Some(OPERATOR_TOKEN)).await, 404, "not_found");
    expect(get("/v1/instances?state=sleeping", Some(OPERATOR_TOKEN)).await, 400, "invalid_state");

    let after = rack_state(client).await;
    assert_eq!(after, before, "bad input changed nothing: boards, deployments, event log");
    assert_eq!(client.deployment("existing").await.spec, serde_json::from_value(good).unwrap());
}

/// An enrolment request for an x86_64 board `board` with `join_token` (what a board daemon
/// sends, written out by hand).
fn enrol_body(board: &str, join_token: &str) -> Value {
    let facts = json!({
        "board_id": board,
        "arch": "x86_64",
        "soc_model": null,
        "cpu": {"cpus": [0], "clusters": [{"cpus": [0], "capacity": null}]},
        "memory_mib": 4096,
        "disk": {"mount": "/", "total_mib": 100000, "available_mib": 50000},
        "gpu_devices": [],
        "encoder_devices": [],
        "kernel": {"release": "6.1", "page_size": 4096, "binderfs": false, "binder_devices": [], "memfd": true,
                   "ashmem": false, "inotify_max_user_instances": null, "inotify_max_user_watches": null},
        "docker": {"reachable": true, "version": "24", "api_version": "1.43", "cgroup_version": 2},
        "addresses": ["127.0.0.1"],
        "host_port_range": {"start": 24000, "end": 24049},
        "overridden": []
    });
    json!({
        "join_token": join_token,
        "facts": facts,
        "address": "127.0.0.1",
        "now_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        "desired_generation": 0
    })
}

// A board that enrols again gets a new credential, and its old one is refused from then on,
// although the controller had just accepted it (it keeps the board credentials it has checked).
#[tokio::test]
async fn a_board_that_enrols_again_is_refused_with_its_old_credential() {
    let dir = TestDir::new("ac-reenrol");
    let controller = Controller::start(dir.path(), &[]).await;
    let client = &controller.client;
    let join = client.join_token().await;
    let enrol = || async {
        let body = enrol_body("e2e-again", &join).to_string();
        let answer = client.request(Method::POST, "/v1/enrol", None, Some(body)).await.expect("an answer");
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.body["credential"].as_str().expect("a credential").to_string()
    };
    let heartbeat = |credential: String| async move {
        let body = json!({"applied_generation": 0, "instances": [], "journal": []}).to_string();
        let path = "/v1/boards/e2e-again/heartbeat";
        let answer =
            client.request(Method::POST, path, Some(&credential), Some(body)).await.expect("an answer");
        (answer.status, answer.code().to_string())
    };
    let refused = (401, "unauthorized".to_string());

    let first = enrol().await;
    assert_eq!(heartbeat(first.clone()).await.0, 200);
    assert_eq!(heartbeat(first.clone()).await.0, 200, "accepted again, from what was checked");
    let second = enrol().await;
    assert_ne!(first, second, "a new enrolment gives a new credential");
    assert_eq!(heartbeat(first.clone()).await, refused, "the old credential after enrolling again");
    assert_eq!(heartbeat(second).await.0, 200);
    assert_eq!(heartbeat(first).await, refused);
}

// Every mutating route answers 401 without a credential or with a wrong one, and changes
// nothing; with a credential, garbage bodies get a coded 4xx, never a 5xx. The list is the
// router's (`array-controller/src/http/mod.rs`), every route that changes something.
#[tokio::test]
async fn every_mutating_route_needs_a_credential_and_answers_garbage_with_a_code() {
    let dir = TestDir::new("ac-routes");
    let controller = Controller::start(dir.path(), &[]).await;
    let client = &controller.client;
    client.put_deployment("existing", &sim_deployment(0)).await.expect("a valid deployment is accepted");
    let before = rack_state(client).await;
    // (method, path, the credential the route takes: a board's is never valid here)
    let routes = [
        (Method::POST, "/v1/join-tokens", OPERATOR_TOKEN),
        (Method::DELETE, "/v1/join-tokens/x-1", OPERATOR_TOKEN),
        (Method::POST, "/v1/boards/x-1/cordon", OPERATOR_TOKEN),
        (Method::POST, "/v1/boards/x-1/uncordon", OPERATOR_TOKEN),
        (Method::POST, "/v1/boards/x-1/heartbeat", "no-board-credential"),
        (Method::PUT, "/v1/deployments/existing", OPERATOR_TOKEN),
        (Method::DELETE, "/v1/deployments/existing", OPERATOR_TOKEN),
        (Method::POST, "/v1/claims", BROKER_TOKEN),
        (Method::POST, "/v1/claims/renew", BROKER_TOKEN),
        (Method::DELETE, "/v1/claims/x-1", BROKER_TOKEN),
    ];
    for (method, path, _) in &routes {
        for token in [None, Some("not-a-token")] {
            let answer =
                client.request(method.clone(), path, token, Some("{}".into())).await.expect("an answer");
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{method} {path} with {token:?}: {answer:?}"
            );
        }
    }
    assert_eq!(rack_state(client).await, before, "refused requests changed the rack");

    for (method, path, token) in &routes {
        for body in GARBAGE_BODIES {
            let answer = client
                .request(method.clone(), path, Some(token), Some(body.into()))
                .await
                .expect("an answer");
            answer.assert_no_5xx_and_coded(&format!("{method} {path} with {body:?}"));
        }
    }
}

/// Fast reset (issue 3, "Release"): a game that asks for it gets its data cleared over ADB and
/// relaunched in the same container, instead of a new container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_reset_game_is_cleared_and_relaunched_in_the_same_container() {
    let _slot = rack_slot().await;
    let rack = Rack::start("ac-fast", 1, &[]).await;
    let client = rack.client();
    let mut spec = sim_deployment(1);
    spec["reset"] = json!("fast");
    spec["launch"] = json!("com.example.game/.MainActivity");
    client.put_deployment(DEPLOYMENT, &spec).await.expect("PUT deployment");
    let ready = rack.wait_ready(DEPLOYMENT, 1, READY_TIMEOUT).await;
    let before = ready[0].clone();
    let container = before.container_id.clone().expect("a ready instance has a container");

    let claim = client.claim(DEPLOYMENT, "fast-1", None).await.expect("claim");
    let token = claim.stream_token.clone().expect("a token");
    let mut player = Player::connect(&claim.host, claim.ports.stream, &token).await;
    assert!(player.accepted(), "{:?}", player.reply);
    player.frames(2).await;
    client.release("fast-1").await.expect("release");
    // The same container carries on, but the reset gives it a new token: the player of the
    // ended claim is cut off and cannot come back.
    player.wait_ended(READY_TIMEOUT).await;
    let what = "the fast-reset instance back to ready";
    let list = wait_instances(client, DEPLOYMENT, READY_TIMEOUT, what, |list| {
        list.iter().any(|i| i.id == before.id && i.state == InstanceState::Ready)
    })
    .await;
    let after = list.into_iter().find(|i| i.id == before.id).unwrap();
    assert_eq!(after.generation, before.generation, "a fast reset keeps the generation");
    assert_eq!(after.container_id.as_deref(), Some(container.as_str()), "a fast reset keeps the container");
    assert_eq!(hello(&claim.host, claim.ports.stream, &token).await, "ERR bad_token");
    let next = client.claim(DEPLOYMENT, "fast-2", None).await.expect("claim again");
    let next_token = next.stream_token.clone().expect("a token");
    assert_ne!(next_token, token, "the fast reset rotated the token");
    assert!(Player::connect(&next.host, next.ports.stream, &next_token).await.accepted());

    // The board applied reset epoch 1, went through booting ("fast reset") and back to ready with
    // the game in the foreground again.
    let daemon = &rack.boards[0].daemon().client;
    let status = daemon.status().await;
    let instance = status.instances.iter().find(|i| i.id == before.id).expect("the board reports it");
    assert_eq!(instance.reset_epoch, 1);
    assert_eq!(instance.phase, InstancePhase::Ready);
    assert!(instance.boot.foreground_ms.is_some(), "the game was relaunched: {instance:?}");
    // Its journal reached the controller as board reports: booting ("fast reset"), then ready.
    let events = client.events_until_quiet(None, Duration::from_millis(500)).await;
    let phases: Vec<(InstancePhase, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            RackEventBody::BoardReport { entry, .. } => match &entry.event {
                api::BoardEvent::Phase { instance, phase, reason, .. } if *instance == before.id => {
                    Some((*phase, reason.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    let reset_at = phases
        .iter()
        .position(|(phase, reason)| {
            *phase == InstancePhase::Booting && reason.as_deref() == Some("fast reset")
        })
        .unwrap_or_else(|| panic!("no fast reset among the board's reports: {phases:?}"));
    assert!(phases[reset_at..].iter().any(|(phase, _)| *phase == InstancePhase::Ready), "{phases:?}");
    assert_eq!(board_containers(rack.boards[0].id()).len(), 1, "no second container");
}
