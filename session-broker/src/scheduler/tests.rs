//! Unit tests of each rule, and property tests of the whole decision.

use std::collections::BTreeMap;

use super::*;

pub(super) const G: &str = "demo";

pub(super) fn rack(id: &str, region: &str, warm: u32) -> Rack {
    let mut r = Rack::from_boards(id, region, RackState::Online, &[]);
    r.archs.insert("aarch64".into());
    r.gpu_kinds.insert("mali-g610".into());
    r.games.insert(G.into(), GameStock { warm, active: 2 });
    r.spare_slots = 4;
    r
}

pub(super) fn index(racks: Vec<Rack>) -> CapacityIndex {
    let mut by_region: BTreeMap<String, Vec<Rack>> = BTreeMap::new();
    for r in racks {
        by_region.entry(r.region.clone()).or_default().push(r);
    }
    CapacityIndex::new(by_region.into_iter().map(|(id, racks)| Region { id, racks }).collect())
}

fn player(rtts: &[(&str, f64)]) -> Player {
    Player {
        id: "p".into(),
        rtt_ms: rtts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Player::default()
    }
}

pub(super) fn req(p: Player) -> Request {
    Request::new(G, "t", p)
}

fn placed(d: &Decision) -> (&str, &[String]) {
    match &d.outcome {
        Outcome::Place { region, racks } => (region, racks),
        o => panic!("expected a placement, got {o:?}: {}", d.explanation.summary),
    }
}

fn two_regions(east_warm: u32, west_warm: u32) -> CapacityIndex {
    index(vec![rack("e1", "east", east_warm), rack("w1", "west", west_warm)])
}

#[test]
fn lowest_rtt_region_wins() {
    let idx = two_regions(3, 3);
    let g = Game::new(G);
    let d = decide(&idx, &g, &req(player(&[("east", 15.0), ("west", 60.0)])), 30_000);
    assert_eq!(placed(&d).0, "east");
    let d = decide(&idx, &g, &req(player(&[("east", 90.0), ("west", 20.0)])), 30_000);
    assert_eq!(placed(&d).0, "west");
    let east = d.explanation.regions.iter().find(|r| r.region == "east").unwrap();
    assert_eq!(east.rejected.as_ref().unwrap().code, ReasonCode::RttOverCap);
}

#[test]
fn full_region_spills_within_budget_else_queues_cold() {
    let idx = two_regions(0, 3);
    let p = player(&[("east", 15.0), ("west", 60.0)]);
    let d = decide(&idx, &Game::new(G), &req(p.clone()), 30_000);
    assert_eq!(placed(&d).0, "west");

    let tight = Game { max_rtt_ms: 30.0, preferred_rtt_ms: 20.0, ..Game::new(G) };
    let d = decide(&idx, &tight, &req(p), 30_000);
    assert_eq!(
        d.outcome,
        Outcome::Queue { region: Some("east".into()), rack: Some("e1".into()), start_instance: true }
    );
    assert_eq!(d.retry_at_remaining_ms, Some(18_000));
}

#[test]
fn cold_path_waits_for_a_release_when_there_is_no_room() {
    let mut e = rack("e1", "east", 0);
    e.spare_slots = 0;
    let d = decide(&index(vec![e]), &Game::new(G), &req(player(&[("east", 15.0)])), 30_000);
    assert_eq!(
        d.outcome,
        Outcome::Queue { region: Some("east".into()), rack: Some("e1".into()), start_instance: false }
    );
}

#[test]
fn pinned_region_wins() {
    let idx = two_regions(3, 3);
    let mut r = req(player(&[("east", 15.0), ("west", 95.0)]));
    r.pinned_region = Some("west".into());
    let d = decide(&idx, &Game::new(G), &r, 30_000);
    assert_eq!(placed(&d).0, "west");
    let east = d.explanation.regions.iter().find(|r| r.region == "east").unwrap();
    assert_eq!(east.rejected.as_ref().unwrap().code, ReasonCode::PinnedElsewhere);
}

#[test]
fn hint_only_ranks_the_hinted_region_first() {
    let idx = two_regions(3, 30);
    let p = Player { id: "p".into(), region: Some("east".into()), ..Player::default() };
    assert_eq!(placed(&decide(&idx, &Game::new(G), &req(p.clone()), 30_000)).0, "east");
    let idx = two_regions(0, 30);
    assert_eq!(placed(&decide(&idx, &Game::new(G), &req(p), 30_000)).0, "west");
}

#[test]
fn unreachable_racks_are_never_candidates() {
    let mut a = rack("e1", "east", 5);
    a.state = RackState::Unreachable;
    let idx = index(vec![a, rack("e2", "east", 1)]);
    let d = decide(&idx, &Game::new(G), &req(player(&[("east", 10.0)])), 30_000);
    assert_eq!(placed(&d).1, ["e2".to_string()]);
    let e1 = d.explanation.racks.iter().find(|r| r.rack == "e1").unwrap();
    assert_eq!(e1.rejected.as_ref().unwrap().code, ReasonCode::RackUnreachable);

    // Only unreachable racks: queued (they may come back), never refused early.
    let mut a = rack("e1", "east", 5);
    a.state = RackState::Unreachable;
    let d = decide(&index(vec![a]), &Game::new(G), &req(player(&[("east", 10.0)])), 30_000);
    assert!(matches!(d.outcome, Outcome::Queue { rack: None, .. }), "{:?}", d.outcome);
}

#[test]
fn degraded_ranks_below_online() {
    let mut a = rack("a", "east", 1);
    a.state = RackState::Degraded;
    let mut b = rack("b", "east", 8);
    b.load = Load { cpu: 0.95, gpu: 0.95, thermal_headroom: 0.1 };
    let d = decide(&index(vec![a, b]), &Game::new(G), &req(player(&[("east", 10.0)])), 30_000);
    assert_eq!(placed(&d).1, ["b".to_string(), "a".to_string()]);
}

#[test]
fn fill_and_spread_order() {
    let idx = index(vec![rack("a", "east", 1), rack("b", "east", 6), rack("c", "east", 3)]);
    let p = req(player(&[("east", 10.0)]));
    let fill = decide(&idx, &Game { packing: Packing::Fill, ..Game::new(G) }, &p, 30_000);
    assert_eq!(placed(&fill).1, ["a", "c", "b"].map(String::from));
    let spread = decide(&idx, &Game { packing: Packing::Spread, ..Game::new(G) }, &p, 30_000);
    assert_eq!(placed(&spread).1, ["b", "c", "a"].map(String::from));
}

#[test]
fn resource_type_and_uplink_filter_racks() {
    let mut x86 = rack("x", "east", 5);
    x86.archs = ["x86_64".to_string()].into();
    let mut lossy = rack("l", "east", 5);
    lossy.uplinks.insert("east".into(), Uplink { rtt_ms: 5.0, loss: 0.2 });
    let g = Game { archs: ["aarch64".to_string()].into(), ..Game::new(G) };
    let d =
        decide(&index(vec![x86, lossy, rack("ok", "east", 1)]), &g, &req(player(&[("east", 10.0)])), 30_000);
    assert_eq!(placed(&d).1, ["ok".to_string()]);
    let code =
        |id: &str| d.explanation.racks.iter().find(|r| r.rack == id).unwrap().rejected.clone().unwrap().code;
    assert_eq!(code("x"), ReasonCode::ResourceMismatch);
    assert_eq!(code("l"), ReasonCode::UplinkPoor);
}

#[test]
fn relaxation_follows_remaining_time() {
    assert_eq!(relax::level(30_000, 30_000), Level::Strict);
    assert_eq!(relax::level(15_000, 30_000), Level::PreferredRelaxed);
    assert_eq!(relax::level(8_000, 30_000), Level::CapRelaxed);
    assert_eq!(relax::level(2_000, 30_000), Level::AnyRegion);
    assert_eq!(relax::level(0, 0), Level::AnyRegion);

    // Preferred tier: at strict a loaded 38 ms region with 1 warm instance beats an idle 42 ms
    // one with 40 (it is within the preferred 40 ms); relaxed, capacity and load win.
    let mut near = rack("n", "near", 1);
    near.load = Load { cpu: 0.9, gpu: 0.9, thermal_headroom: 0.2 };
    let idx = index(vec![near, rack("f", "far", 40)]);
    let p = req(player(&[("near", 38.0), ("far", 42.0)]));
    assert_eq!(placed(&decide(&idx, &Game::new(G), &p, 30_000)).0, "near");
    assert_eq!(placed(&decide(&idx, &Game::new(G), &p, 15_000)).0, "far");

    // Cap: east full, west at 100 ms (over 80, under 1.5 x 80): queued on east, then west
    // once less than 30% of the deadline is left; a 200 ms region only at the last level.
    let idx = index(vec![rack("e1", "east", 0), rack("w1", "west", 2)]);
    let p = req(player(&[("east", 15.0), ("west", 100.0)]));
    assert!(matches!(decide(&idx, &Game::new(G), &p, 10_000).outcome, Outcome::Queue { .. }));
    assert_eq!(placed(&decide(&idx, &Game::new(G), &p, 8_000)).0, "west");
    let p = req(player(&[("east", 15.0), ("west", 200.0)]));
    assert!(matches!(decide(&idx, &Game::new(G), &p, 8_000).outcome, Outcome::Queue { .. }));
    assert_eq!(placed(&decide(&idx, &Game::new(G), &p, 2_000)).0, "west");
}

#[test]
fn no_capacity_only_when_nothing_can_serve() {
    let idx = two_regions(0, 0);
    let p = req(player(&[("east", 15.0), ("west", 60.0)]));
    assert_eq!(
        decide(&idx, &Game::new(G), &p, 0).outcome,
        Outcome::NoCapacity { code: ReasonCode::DeadlinePassed }
    );
    // Nobody runs a game for a GPU no rack has.
    let g = Game { gpu_kind: Some("nvidia-t4".into()), ..Game::new(G) };
    let d = decide(&idx, &g, &p, 30_000);
    assert_eq!(d.outcome, Outcome::NoCapacity { code: ReasonCode::NoCapacity });
    // Boot too slow for the time left and nothing to free: no capacity; something to free: queued.
    let mut r = rack("e1", "east", 0);
    r.games.insert(G.into(), GameStock { warm: 0, active: 0 });
    let slow = Game { boot_ms: 20_000, ..Game::new(G) };
    let one = index(vec![r.clone()]);
    assert!(matches!(decide(&one, &slow, &p, 25_000).outcome, Outcome::Queue { start_instance: true, .. }));
    assert_eq!(decide(&one, &slow, &p, 10_000).outcome, Outcome::NoCapacity { code: ReasonCode::NoCapacity });
    r.games.insert(G.into(), GameStock { warm: 0, active: 1 });
    assert!(matches!(decide(&index(vec![r]), &slow, &p, 10_000).outcome, Outcome::Queue { .. }));
}

#[test]
fn every_rejection_carries_a_reason_and_serializes() {
    let mut u = rack("u", "west", 3);
    u.state = RackState::Unreachable;
    let idx = index(vec![
        rack("e1", "east", 0),
        rack("e2", "east", 2),
        u,
        rack("w2", "west", 1),
        rack("s", "south", 1),
    ]);
    let d = decide(&idx, &Game::new(G), &req(player(&[("east", 15.0), ("west", 30.0)])), 30_000);
    assert_eq!(placed(&d), ("east", &["e2".to_string()][..]));
    assert_eq!(d.explanation.regions.len(), 3);
    assert_eq!(d.explanation.racks.len(), 5);
    for c in &d.explanation.regions {
        assert_eq!(c.rejected.is_none(), c.region == "east", "{c:?}");
    }
    for c in &d.explanation.racks {
        assert_eq!(c.rejected.is_none(), c.rack == "e2", "{c:?}");
    }
    assert!(d.explanation.rejections().all(|r| !r.message.is_empty()));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["outcome"]["kind"], "place");
    assert_eq!(json["explanation"]["regions"][2]["rejected"]["code"], "rtt_unmeasured");
    let back: Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
}
