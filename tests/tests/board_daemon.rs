//! The board daemon against the real Docker engine, as separate processes, driven through its
//! public API only (issue 2, "What must be shown" 1-6, and bad input).
//!
//! Every test has its own board id, data directory and host ports, so they run in parallel.
//! Timings asserted are only lower bounds the daemon cannot beat if it works (a boot delay);
//! upper bounds are generous timeouts. Measured figures are printed, not asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::{AnomalyKind, BoardEvent, BoardStatus, DesiredState, InstancePhase, InstanceSpec, JournalEntry};
use e2e::adb::AdbServer;
use e2e::metrics::sample;
use e2e::stream::{Player, hello};
use e2e::{
    BoardClient, DockerCleanup, PortBlock, SIM_IMAGE, TestBoard, board_containers, docker, docker_inspect,
    ensure_image, instance, try_docker_inspect, wait_until, wait_until_every,
};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(40);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

fn state(generation: u64, instances: Vec<InstanceSpec>) -> DesiredState {
    DesiredState { generation, instances }
}

/// Waits until every instance of `ids` is `ready`; returns that status.
async fn wait_all_ready(client: &BoardClient, ids: &[&str]) -> BoardStatus {
    wait_until(READY_TIMEOUT, &format!("{ids:?} to be ready"), || async {
        let status = client.try_status().await?;
        let not_ready: Vec<String> = ids
            .iter()
            .filter(|id| instance(&status, id).is_none_or(|i| i.phase != InstancePhase::Ready))
            .map(|id| format!("{id}: {:?}", instance(&status, id).map(|i| (i.phase, i.reason.clone()))))
            .collect();
        if not_ready.is_empty() { Ok(status) } else { Err(format!("not ready: {not_ready:?}")) }
    })
    .await
}

/// Phase changes of `id` in the journal, in order, with their times.
fn phases_of(journal: &[JournalEntry], id: &str) -> Vec<(u64, InstancePhase)> {
    journal
        .iter()
        .filter_map(|e| match &e.event {
            BoardEvent::Phase { instance, phase, .. } if instance == id => Some((e.at_ms, *phase)),
            _ => None,
        })
        .collect()
}

/// The container id of instance `id` in `status`; panics when it has none.
fn container_of(status: &BoardStatus, id: &str) -> String {
    instance(status, id)
        .and_then(|i| i.container_id.clone())
        .unwrap_or_else(|| panic!("instance {id} has no container in {status:#?}"))
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer}"))
}

/// Waits until the daemon has run `passes` more full reconcile passes than now.
async fn wait_reconcile_passes(client: &BoardClient, passes: f64) {
    let series = "board_daemon_reconcile_passes_total";
    let start = sample(&client.metrics().await, series).expect("the daemon exports its reconcile passes");
    wait_until(Duration::from_secs(20), &format!("{passes} more reconcile passes"), || async {
        let now = sample(&client.metrics().await, series).unwrap_or(0.0);
        if now >= start + passes { Ok(()) } else { Err(now) }
    })
    .await;
}

// 1. images/build.sh builds the image; Debian's adb reads sys.boot_completed 0 then 1.
#[tokio::test]
async fn the_image_builds_and_debian_adb_sees_boot_completed_go_from_0_to_1() {
    ensure_image();
    let image = docker_inspect(SIM_IMAGE);
    assert_eq!(image["Os"], "linux");
    assert_eq!(image["Config"]["ExposedPorts"], json!({"5555/tcp": {}, "8000/tcp": {}}));

    let mut ports = PortBlock::take();
    let adb_port = ports.next_port();
    let name = format!("e2e-adb-{}", std::process::id());
    let mut cleanup = DockerCleanup::default();
    cleanup.add_name(&name);
    cleanup.clean();
    let boot_seconds = 4;
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{adb_port}:5555"),
        "-e",
        &format!("SIM_BOOT_SECONDS={boot_seconds}"),
        "-e",
        "SIM_MODEL=e2e-model",
        SIM_IMAGE,
    ]);
    let started = Instant::now();

    let adb = AdbServer::start();
    let serial = format!("127.0.0.1:{adb_port}");
    let (adb, serial) = (&adb, serial.as_str());
    // Docker's port proxy accepts before the container listens, so connecting is retried.
    wait_until(Duration::from_secs(10), "adb connect", move || async move { adb.connect(serial) }).await;
    adb.wait_for_device(serial, Duration::from_secs(10)).expect("the device comes online");

    let first = adb.shell(serial, "getprop sys.boot_completed").expect("adb shell getprop");
    let first_at = started.elapsed();
    assert!(
        first_at < Duration::from_secs(boot_seconds),
        "the first getprop took {first_at:?}, longer than the boot delay: the machine is too slow for this test"
    );
    assert_eq!(first, "0", "sys.boot_completed during the {boot_seconds} s boot delay");
    assert_eq!(adb.shell(serial, "getprop ro.product.model").unwrap(), "e2e-model");

    let booted_at = wait_until(Duration::from_secs(15), "sys.boot_completed=1", move || async move {
        match adb.shell(serial, "getprop sys.boot_completed") {
            Ok(v) if v == "1" => Ok(started.elapsed()),
            other => Err(other),
        }
    })
    .await;
    // The container started before `started`, by at most the time `docker run` took to return.
    assert!(booted_at > first_at, "boot completed ({booted_at:?}) before the first read ({first_at:?})");
    assert!(booted_at >= Duration::from_secs(boot_seconds - 1), "booted after only {booted_at:?}");
    println!("adb: sys.boot_completed 0 at {first_at:?}, 1 at {booted_at:?} after docker run returned");
}

// 2. Four instances: four containers with the limits asked for, ready only after the boot delay.
#[tokio::test]
async fn four_instances_get_their_limits_and_are_ready_only_after_their_boot_delay_through_adb() {
    ensure_image();
    let mut board = TestBoard::new("four");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let cpus = client.facts().await.cpu.cpus;
    let (first, last) = (cpus[0], *cpus.last().unwrap());
    let all = api::facts::cpuset_string(&cpus);

    let boot_ms = 2000;
    let asked: Vec<(InstanceSpec, String)> = [
        ("a", vec![first], 96, 64),
        ("b", vec![last], 128, 80),
        ("c", cpus.clone(), 160, 96),
        ("d", vec![], 192, 112), // empty: all the board's CPUs
    ]
    .into_iter()
    .map(|(id, cpus, memory_mib, pids_limit)| {
        let mut spec = InstanceSpec { cpus, memory_mib, pids_limit, ..board.sim_spec(id) };
        spec.env.insert("SIM_BOOT_SECONDS".into(), (boot_ms / 1000).to_string());
        let cpuset = if spec.cpus.is_empty() { all.clone() } else { api::facts::cpuset_string(&spec.cpus) };
        (spec, cpuset)
    })
    .collect();
    let ids: Vec<&str> = asked.iter().map(|(s, _)| s.id.as_str()).collect();

    let put_at = Instant::now();
    let accepted = client.put_desired(&state(1, asked.iter().map(|(s, _)| s.clone()).collect())).await;
    assert_eq!(accepted, Ok(json!({"generation": 1, "changed": true})));

    // Watch every status until all are ready: none may be ready before its boot delay is over.
    let status = wait_until(READY_TIMEOUT, "4 instances ready", || async {
        let status = client.try_status().await?;
        let elapsed = put_at.elapsed();
        let ready = status.instances.iter().filter(|i| i.phase == InstancePhase::Ready).count();
        assert!(
            ready == 0 || elapsed >= Duration::from_millis(boot_ms),
            "{ready} instance(s) ready {elapsed:?} after the PUT, before the {boot_ms} ms boot delay: {status:#?}"
        );
        if ready == 4 { Ok(status) } else { Err(format!("{status:#?}")) }
    })
    .await;
    println!("4 instances ready {:?} after the PUT", put_at.elapsed());

    for id in &ids {
        let i = instance(&status, id).unwrap();
        let b = &i.boot;
        let (created, started, adb, booted) = (
            b.created_ms.expect("created_ms"),
            b.started_ms.expect("started_ms"),
            b.adb_ms.expect("adb_ms"),
            b.booted_ms.expect("booted_ms"),
        );
        assert!(created <= started && started <= adb && adb <= booted, "{id}: stages out of order: {b:?}");
        assert!(booted >= boot_ms, "{id} booted {booted} ms after its container was asked for: {b:?}");
        assert_eq!((i.restarts, i.crash_loop, i.generation), (0, false, 1), "{id}: {i:?}");
        println!("{id}: boot stages {b:?}");
    }

    // Through ADB: each instance answered ADB with boot_completed=0 (booting) before it was ready.
    let journal = client.journal(0).await;
    for id in &ids {
        let phases: Vec<InstancePhase> = phases_of(&journal, id).into_iter().map(|(_, p)| p).collect();
        let booting = phases.iter().position(|p| *p == InstancePhase::Booting);
        let ready = phases.iter().position(|p| *p == InstancePhase::Ready);
        assert!(
            matches!((booting, ready), (Some(b), Some(r)) if b < r),
            "{id}: phases {phases:?} should go through booting before ready"
        );
    }

    // The containers, as Docker holds them.
    let containers = board_containers(&board.id);
    let in_status: BTreeSet<String> = ids.iter().map(|id| container_of(&status, id)).collect();
    assert_eq!(containers.iter().cloned().collect::<BTreeSet<_>>(), in_status);
    assert_eq!(containers.len(), 4);
    for (spec, cpuset) in &asked {
        let c = docker_inspect(&container_of(&status, &spec.id));
        let host = &c["HostConfig"];
        assert_eq!(str_at(&c, "/Name"), format!("/appliance-{}-{}", board.id, spec.id));
        assert_eq!(c["State"]["Running"], true);
        assert_eq!(host["CpusetCpus"], cpuset.as_str(), "{}", spec.id);
        assert_eq!(host["Memory"], spec.memory_mib * 1024 * 1024, "{}", spec.id);
        assert_eq!(
            host["MemorySwap"],
            spec.memory_mib * 1024 * 1024,
            "{}: no swap beyond the limit",
            spec.id
        );
        assert_eq!(host["PidsLimit"], spec.pids_limit, "{}", spec.id);
        assert_eq!(host["PortBindings"]["5555/tcp"][0]["HostPort"], spec.ports.adb.to_string());
        assert_eq!(host["PortBindings"]["8000/tcp"][0]["HostPort"], spec.ports.stream.to_string());
        assert_eq!(c["NetworkSettings"]["Ports"]["5555/tcp"][0]["HostPort"], spec.ports.adb.to_string());
        assert_eq!(host["RestartPolicy"]["Name"], "no", "the daemon owns restarts");
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["appliance.board"], board.id.as_str());
        assert_eq!(labels["appliance.instance"], spec.id.as_str());
        assert_eq!(labels["appliance.generation"], "1");
        assert_eq!(c["Config"]["Image"], SIM_IMAGE);
    }

    let metrics = client.metrics().await;
    assert_eq!(sample(&metrics, "board_daemon_instances{phase=\"ready\"}"), Some(4.0), "{metrics}");
    let booted = sample(&metrics, "board_daemon_boot_stage_seconds_count{stage=\"booted\"}");
    assert!(booted >= Some(4.0), "boot stage histogram: {booted:?}\n{metrics}");
}

// 3a. docker kill of one instance: noticed and brought back.
#[tokio::test]
async fn a_killed_instance_container_is_noticed_and_brought_back() {
    ensure_image();
    let mut board = TestBoard::new("kill");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let (a, b) = (board.sim_spec("a"), board.sim_spec("b"));
    client.put_desired(&state(1, vec![a, b])).await.expect("accepted");
    let before = wait_all_ready(client, &["a", "b"]).await;
    let (a_id, b_id) = (container_of(&before, "a"), container_of(&before, "b"));
    let a_started = str_at(&docker_inspect(&a_id), "/State/StartedAt").to_string();
    let seq = client.journal(0).await.last().map_or(0, |e| e.seq);

    let killed_ms = now_ms();
    let killed = Instant::now();
    docker(&["kill", &a_id]);
    let a_id_ref = a_id.as_str();
    let a_started_ref = a_started.as_str();
    let back = wait_until_every(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "the killed container to run again",
        move || async move {
            let c = try_docker_inspect(a_id_ref).ok_or("container gone")?;
            let state = &c["State"];
            if state["Running"] == true && state["StartedAt"] != a_started_ref {
                Ok(killed.elapsed())
            } else {
                Err("not restarted yet")
            }
        },
    )
    .await;

    let after = wait_all_ready(client, &["a", "b"]).await;
    let a_now = instance(&after, "a").unwrap();
    assert_eq!(a_now.container_id.as_deref(), Some(a_id.as_str()), "restarted in place, not recreated");
    assert_eq!(a_now.restarts, 1);
    assert!(!a_now.crash_loop);
    let exit = a_now.last_exit.as_ref().expect("last_exit is reported");
    assert_eq!((exit.code, exit.oom_killed), (137, false), "{exit:?}");
    let b_now = instance(&after, "b").unwrap();
    assert_eq!((b_now.container_id.as_deref(), b_now.restarts), (Some(b_id.as_str()), 0));
    assert_eq!(board_containers(&board.id).len(), 2);

    let journal = client.journal(seq).await;
    let noticed = phases_of(&journal, "a")
        .into_iter()
        .find(|(_, p)| *p == InstancePhase::Exited)
        .map(|(at, _)| at.saturating_sub(killed_ms))
        .expect("the exit is journaled");
    println!("docker kill: noticed (journal 'exited') after {noticed} ms; running again after {back:?}");
}

// 3b. A container that keeps crashing: restarts backed off, reported as a crash loop.
#[tokio::test]
async fn a_crashing_instance_is_backed_off_and_reported_as_a_crash_loop() {
    ensure_image();
    let mut board = TestBoard::new("crash");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let mut crashy = board.sim_spec("crashy");
    crashy.env.insert("SIM_CRASH_AFTER_SECONDS".into(), "0.5".into());
    client.put_desired(&state(1, vec![crashy])).await.expect("accepted");

    let status = wait_until(Duration::from_secs(30), "3 restarts and a crash loop", || async {
        let status = client.try_status().await?;
        match instance(&status, "crashy") {
            Some(i) if i.crash_loop && i.restarts >= 3 => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let i = instance(&status, "crashy").unwrap();
    assert_eq!(i.last_exit.as_ref().map(|e| (e.code, e.oom_killed)), Some((3, false)), "{i:?}");
    assert_ne!(i.phase, InstancePhase::Ready);
    let anomaly = status
        .anomalies
        .iter()
        .find(|a| a.kind == AnomalyKind::CrashLoop && a.instance.as_deref() == Some("crashy"))
        .unwrap_or_else(|| panic!("no crash_loop anomaly in {:#?}", status.anomalies));
    assert!(!anomaly.message.is_empty());
    assert_eq!(board_containers(&board.id).len(), 1, "restarted in place, never duplicated");

    // Restart delays (exit noticed -> started again) from the journal: they grow.
    let phases = phases_of(&client.journal(0).await, "crashy");
    let mut delays = Vec::new();
    for (n, (at, phase)) in phases.iter().enumerate() {
        if *phase == InstancePhase::Exited
            && let Some((start, _)) = phases[n + 1..].iter().find(|(_, p)| *p == InstancePhase::Starting)
        {
            delays.push(start - at);
        }
    }
    println!("crash loop: restart delays {delays:?} ms; phases {phases:?}");
    assert!(delays.len() >= 3, "at least 3 restarts journaled: {phases:?}");
    assert!(delays[1] >= 950 && delays[2] >= 1950, "backoff of 1 s then 2 s expected: {delays:?} ms");
    assert!(delays[0] < delays[1] && delays[1] < delays[2], "restart delays must grow: {delays:?} ms");
}

// 3c. Replacing a crash-looping instance with a healthy spec (the remedy the controller's
// escalation ladder applies: "recreate instance") ends the crash loop it reports.
#[tokio::test]
async fn replacing_a_crash_looping_instance_with_a_healthy_spec_clears_its_crash_loop() {
    ensure_image();
    let mut board = TestBoard::new("heal");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let healthy = board.sim_spec("heal");
    let mut crashy = healthy.clone();
    crashy.env.insert("SIM_CRASH_AFTER_SECONDS".into(), "0.5".into());
    client.put_desired(&state(1, vec![crashy])).await.expect("accepted");
    wait_until(Duration::from_secs(30), "a crash loop", || async {
        let status = client.try_status().await?;
        match instance(&status, "heal") {
            Some(i) if i.crash_loop => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    client.put_desired(&state(2, vec![InstanceSpec { generation: 2, ..healthy }])).await.expect("accepted");
    let status = wait_until(READY_TIMEOUT, "the healthy generation ready", || async {
        let status = client.try_status().await?;
        match instance(&status, "heal") {
            Some(i) if i.generation == 2 && i.phase == InstancePhase::Ready => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let i = instance(&status, "heal").unwrap();
    let c = docker_inspect(&container_of(&status, "heal"));
    assert_eq!((c["RestartCount"].as_u64(), c["State"]["Running"].as_bool()), (Some(0), Some(true)));
    assert_eq!(c["Config"]["Labels"]["appliance.generation"], "2", "a new container of the healthy spec");
    assert!(
        !i.crash_loop,
        "the new, healthy container (generation 2, ready, never exited) is still reported as crash-looping: {i:#?}"
    );
}

// 4. SIGKILL the daemon and restart it: the same containers are adopted, none recreated.
#[tokio::test]
async fn after_sigkill_and_restart_the_daemon_adopts_the_same_four_containers() {
    ensure_image();
    let mut board = TestBoard::new("adopt");
    let mut daemon = board.start_daemon().await;
    let specs: Vec<InstanceSpec> = ["a", "b", "c", "d"].iter().map(|id| board.sim_spec(id)).collect();
    daemon.client.put_desired(&state(7, specs)).await.expect("accepted");
    let ids = ["a", "b", "c", "d"];
    let before = wait_all_ready(&daemon.client, &ids).await;
    let containers: BTreeMap<&str, String> = ids.iter().map(|id| (*id, container_of(&before, id))).collect();
    let started_at: BTreeMap<&str, String> = containers
        .iter()
        .map(|(id, c)| (*id, str_at(&docker_inspect(c), "/State/StartedAt").to_string()))
        .collect();
    let set_before = board_containers(&board.id);
    assert_eq!(set_before.len(), 4);

    let status = daemon.process.kill();
    assert!(!status.success(), "SIGKILL ends the daemon: {status:?}");
    for c in containers.values() {
        assert!(e2e::docker::is_running(c), "{c} keeps running without its daemon");
    }

    let daemon = board.start_daemon().await;
    let after = wait_all_ready(&daemon.client, &ids).await;
    assert_eq!(after.desired_generation, 7, "the desired state comes back from the data directory");
    // A few full passes later nothing has been replaced either.
    wait_reconcile_passes(&daemon.client, 2.0).await;
    let after = daemon.client.status().await;
    for id in ids {
        let i = instance(&after, id).unwrap();
        assert_eq!(i.container_id.as_ref(), Some(&containers[id]), "{id} adopted, not recreated");
        assert_eq!((i.phase, i.restarts), (InstancePhase::Ready, 0), "{id}: {i:?}");
        let c = docker_inspect(&containers[id]);
        assert_eq!(str_at(&c, "/State/StartedAt"), started_at[id], "{id} was not restarted");
        assert_eq!(c["RestartCount"], 0);
    }
    assert_eq!(board_containers(&board.id), set_before, "the same 4 containers and no others");

    // A graceful stop (SIGTERM) also leaves them running.
    let mut daemon = daemon;
    let (status, on_its_own) = daemon.process.terminate(Duration::from_secs(10));
    assert!(on_its_own && status.success(), "SIGTERM stops the daemon cleanly: {status:?}");
    for c in containers.values() {
        assert!(e2e::docker::is_running(c), "{c} keeps running after a graceful stop");
    }
}

// 5. Generation change replaces; removal removes; containers of others are left alone.
#[tokio::test]
async fn generation_changes_replace_removals_remove_and_foreign_containers_are_left_alone() {
    ensure_image();
    let mut board = TestBoard::new("gen");
    // Two containers the daemon must never touch: one without labels, one of another board with
    // an instance id this board also uses.
    let plain = format!("e2e-plain-{}", std::process::id());
    let other_board = format!("e2e-other-{}", std::process::id());
    let other = format!("appliance-{other_board}-a");
    board.cleanup.add_name(&plain);
    board.cleanup.add_name(&other);
    board.cleanup.clean();
    docker(&["run", "-d", "--name", &plain, SIM_IMAGE]);
    docker(&[
        "run",
        "-d",
        "--name",
        &other,
        "--label",
        &format!("appliance.board={other_board}"),
        "--label",
        "appliance.instance=a",
        "--label",
        "appliance.generation=1",
        SIM_IMAGE,
    ]);
    let foreign: Vec<(String, String)> = [&plain, &other]
        .iter()
        .map(|name| {
            let c = docker_inspect(name);
            (str_at(&c, "/Id").to_string(), str_at(&c, "/State/StartedAt").to_string())
        })
        .collect();

    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let (a1, b) = (board.sim_spec("a"), board.sim_spec("b"));
    client.put_desired(&state(1, vec![a1.clone(), b.clone()])).await.expect("accepted");
    let first = wait_all_ready(client, &["a", "b"]).await;
    let (a1_id, b_id) = (container_of(&first, "a"), container_of(&first, "b"));

    // Generation change of a: a new container with the new generation label; b untouched.
    let a2 = InstanceSpec { generation: 2, ..a1.clone() };
    client.put_desired(&state(2, vec![a2.clone(), b.clone()])).await.expect("accepted");
    let a1_ref = a1_id.as_str();
    let second = wait_until(READY_TIMEOUT, "a replaced and ready", || async move {
        let status = client.try_status().await?;
        match instance(&status, "a") {
            Some(i)
                if i.generation == 2
                    && i.phase == InstancePhase::Ready
                    && i.container_id.as_deref() != Some(a1_ref) =>
            {
                Ok(status)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let a2_id = container_of(&second, "a");
    assert!(try_docker_inspect(&a1_id).is_none(), "the old container of a is removed");
    let a2_container = docker_inspect(&a2_id);
    assert_eq!(a2_container["Config"]["Labels"]["appliance.generation"], "2");
    assert_eq!(container_of(&second, "b"), b_id, "b keeps its container");
    let expected: BTreeSet<String> = [a2_id.clone(), b_id.clone()].into();
    assert_eq!(board_containers(&board.id).into_iter().collect::<BTreeSet<_>>(), expected);

    // Removal of b: its container goes, a stays.
    client.put_desired(&state(3, vec![a2])).await.expect("accepted");
    let board_id = board.id.as_str();
    let a2_ref = a2_id.as_str();
    wait_until(Duration::from_secs(20), "b's container removed", || async move {
        let status = client.try_status().await?;
        let containers = board_containers(board_id);
        if containers == [a2_ref] && instance(&status, "b").is_none() {
            Ok(())
        } else {
            Err(format!("containers {containers:?}, b: {:?}", instance(&status, "b")))
        }
    })
    .await;
    assert!(try_docker_inspect(&b_id).is_none());

    wait_reconcile_passes(client, 2.0).await;
    for (id, started) in &foreign {
        let c = docker_inspect(id);
        assert_eq!(c["State"]["Running"], true, "foreign container {id} is left running");
        assert_eq!(str_at(&c, "/State/StartedAt"), started, "foreign container {id} was not restarted");
    }
    assert_eq!(board_containers(&board.id), [a2_id.as_str()]);
    assert_eq!(instance(&client.status().await, "a").map(|i| i.restarts), Some(0));
}

// 6. A memory ballast above the limit: OOM-killed and reported as such.
#[tokio::test]
async fn an_instance_above_its_memory_limit_is_oom_killed_and_reported() {
    ensure_image();
    let mut board = TestBoard::new("oom");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let mut hog = InstanceSpec { memory_mib: 64, ..board.sim_spec("hog") };
    hog.env.insert("SIM_BALLAST_MIB".into(), "200".into());
    client.put_desired(&state(1, vec![hog])).await.expect("accepted");

    let status = wait_until(Duration::from_secs(30), "an OOM kill to be reported", || async {
        let status = client.try_status().await?;
        let i = instance(&status, "hog");
        let reported = i.and_then(|i| i.last_exit.as_ref()).is_some_and(|e| e.oom_killed);
        let anomaly = status
            .anomalies
            .iter()
            .any(|a| a.kind == AnomalyKind::OomKilled && a.instance.as_deref() == Some("hog"));
        if reported && anomaly { Ok(status) } else { Err(format!("{i:?} anomalies {:?}", status.anomalies)) }
    })
    .await;
    let i = instance(&status, "hog").unwrap();
    assert_eq!(i.last_exit.as_ref().unwrap().code, 137, "{i:?}");
    assert_ne!(i.phase, InstancePhase::Ready);
    let anomaly = status.anomalies.iter().find(|a| a.kind == AnomalyKind::OomKilled).unwrap();
    assert!(anomaly.message.contains("64 MiB"), "the message names the limit: {anomaly:?}");
    let c = docker_inspect(&container_of(&status, "hog"));
    assert_eq!(c["HostConfig"]["Memory"], 64 * 1024 * 1024);
    let journal = client.journal(0).await;
    assert!(
        journal.iter().any(
            |e| matches!(&e.event, BoardEvent::Anomaly { anomaly } if anomaly.kind == AnomalyKind::OomKilled)
        ),
        "the OOM kill is journaled"
    );
}

// 7. A stream token: the instance is ready only once the token is applied over ADB, and then its
// stream takes that token only. A new token goes to the same container (no recreation) and cuts
// the previous holder off. After a daemon restart the token is applied again, not trusted.
#[tokio::test]
async fn an_instance_streams_only_to_the_holder_of_its_stream_token() {
    ensure_image();
    let mut board = TestBoard::new("token");
    let mut daemon = board.start_daemon().await;
    let (first, second) = ("st_e2e_first_token", "st_e2e_second_token");
    let spec = InstanceSpec { stream_token: Some(first.into()), ..board.sim_spec("tok") };
    let port = spec.ports.stream;
    daemon.client.put_desired(&state(1, vec![spec.clone()])).await.expect("accepted");
    let status = wait_all_ready(&daemon.client, &["tok"]).await;
    let container = container_of(&status, "tok");

    // Ready means applied: the first HELLOs after `ready` are already checked against it.
    assert_eq!(hello("127.0.0.1", port, "wrong").await, "ERR bad_token");
    let mut player = Player::connect("127.0.0.1", port, first).await;
    assert!(player.accepted(), "{:?}", player.reply);
    player.frames(3).await;
    // The secret is not in what anyone who reaches the daemon may read.
    let desired = daemon.client.desired().await;
    assert_eq!(desired.instances[0].stream_token, None, "GET /v1/desired shows no token");
    assert!(!serde_json::to_string(&daemon.client.status().await).unwrap().contains(first));

    // A new token without a new instance generation: applied to the running container.
    let renewed = InstanceSpec { stream_token: Some(second.into()), ..spec.clone() };
    daemon.client.put_desired(&state(2, vec![renewed])).await.expect("accepted");
    player.wait_ended(Duration::from_secs(10)).await;
    let status = wait_all_ready(&daemon.client, &["tok"]).await;
    assert_eq!(container_of(&status, "tok"), container, "a new token keeps the container");
    assert_eq!(instance(&status, "tok").unwrap().restarts, 0);
    assert_eq!(hello("127.0.0.1", port, first).await, "ERR bad_token", "the old token is refused");
    let mut player = Player::connect("127.0.0.1", port, second).await;
    assert!(player.accepted(), "{:?}", player.reply);
    player.frames(2).await;
    drop(player);
    let journal = daemon.client.journal(0).await;
    assert!(
        journal.iter().any(
            |e| matches!(&e.event, BoardEvent::Phase { instance, phase: InstancePhase::Booting, reason, .. }
            if instance == "tok" && reason.as_deref() == Some("stream token changed"))
        ),
        "not ready while the new token was applied: {journal:#?}"
    );

    // The daemon is killed and the property lost meanwhile: the restarted daemon applies the
    // token again before it reports the instance ready.
    assert!(!daemon.process.kill().success());
    let adb = AdbServer::start();
    let serial = format!("127.0.0.1:{}", spec.ports.adb);
    adb.connect(&serial).expect("adb connect");
    adb.shell(&serial, "setprop sim.stream.token st_intruder").expect("setprop");
    assert!(Player::connect("127.0.0.1", port, "st_intruder").await.accepted());
    let daemon = board.start_daemon().await;
    let status = wait_all_ready(&daemon.client, &["tok"]).await;
    assert_eq!(container_of(&status, "tok"), container, "adopted, not recreated");
    assert_eq!(hello("127.0.0.1", port, "st_intruder").await, "ERR bad_token");
    assert!(Player::connect("127.0.0.1", port, second).await.accepted());
}

// Bad input through the public API: refused with a stable code, and nothing changes.
#[tokio::test]
async fn bad_desired_states_are_refused_with_a_stable_code_and_change_nothing() {
    ensure_image();
    let mut board = TestBoard::new("bad");
    let daemon = board.start_daemon().await;
    let client = &daemon.client;
    let a = board.sim_spec("a");
    let good = state(5, vec![a.clone()]);
    client.put_desired(&good).await.expect("accepted");
    let running = wait_until(READY_TIMEOUT, "a's container", || async {
        let status = client.try_status().await?;
        instance(&status, "a").and_then(|i| i.container_id.clone()).ok_or_else(|| format!("{status:?}"))
    })
    .await;

    // Each offer would change a (new generation) and add b, if it were accepted.
    let a2 = InstanceSpec { generation: 2, ..a.clone() };
    let b = board.sim_spec("b");
    let offer = |b: InstanceSpec| state(6, vec![a2.clone(), b]);
    let body = |d: &DesiredState| serde_json::to_string(d).unwrap();
    let mut unknown_field = serde_json::to_value(offer(b.clone())).unwrap();
    unknown_field["instances"][1]["gpu"] = json!("mali");
    let max_cpu = client.facts().await.cpu.cpus.into_iter().max().unwrap();

    let cases: Vec<(&str, Result<Value, e2e::ApiError>, u16, &str)> = vec![
        ("no token", client.put_desired_raw(&body(&offer(b.clone())), None).await, 401, "unauthorized"),
        (
            "wrong token",
            client.put_desired_raw(&body(&offer(b.clone())), Some("nope")).await,
            401,
            "unauthorized",
        ),
        (
            "unknown field",
            client.put_desired_raw(&unknown_field.to_string(), Some(&board.token)).await,
            400,
            "invalid_body",
        ),
        (
            "missing image",
            client
                .put_desired(&offer(InstanceSpec { image: "appliance/no-such-image:1".into(), ..b.clone() }))
                .await,
            422,
            "image_not_found",
        ),
        (
            "cpu not on the board",
            client.put_desired(&offer(InstanceSpec { cpus: vec![max_cpu + 1], ..b.clone() })).await,
            422,
            "cpuset_not_on_board",
        ),
        (
            "same host port twice",
            client
                .put_desired(&offer(InstanceSpec {
                    ports: api::InstancePorts { adb: a.ports.adb, stream: b.ports.stream },
                    ..b.clone()
                }))
                .await,
            422,
            "port_conflict",
        ),
        (
            "a stream token a shell would interpret",
            client
                .put_desired(&offer(InstanceSpec { stream_token: Some("x;reboot".into()), ..b.clone() }))
                .await,
            422,
            "invalid_stream_token",
        ),
        (
            "older generation",
            client.put_desired(&state(4, vec![a2.clone(), b.clone()])).await,
            409,
            "stale_generation",
        ),
        (
            "same generation, other content",
            client.put_desired(&state(5, vec![a2.clone(), b.clone()])).await,
            409,
            "generation_reused",
        ),
    ];
    for (what, result, status, code) in cases {
        let err = result.expect_err(what);
        assert_eq!((err.status, err.code.as_str()), (status, code), "{what}: {err:?}");
        assert!(!err.message.is_empty(), "{what}: the refusal says why");
        assert_eq!(client.desired().await, good, "{what}: the desired state is unchanged");
        let status = client.status().await;
        assert_eq!(status.desired_generation, 5, "{what}");
        assert_eq!(
            board_containers(&board.id),
            [running.as_str()],
            "{what}: no container created or replaced"
        );
    }

    // The same offer without a defect is accepted: each refusal above was for its one defect.
    let accepted = client.put_desired(&offer(b)).await;
    assert_eq!(accepted, Ok(json!({"generation": 6, "changed": true})));
    // Let it be applied before the test ends, so no container is created after the cleanup.
    wait_all_ready(client, &["a", "b"]).await;
    assert_eq!(board_containers(&board.id).len(), 2);
}
