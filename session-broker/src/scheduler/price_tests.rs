//! How region prices enter a decision: ranking by effective RTT (tier included), never the RTT
//! cap, and shown in the explanation.

use std::collections::BTreeMap;

use super::tests::{G, index, rack, req};
use super::*;

fn player(rtts: &[(&str, f64)]) -> Player {
    Player {
        id: "p".into(),
        rtt_ms: rtts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Player::default()
    }
}

fn priced(mut idx: CapacityIndex, prices: &[(&str, f64)]) -> CapacityIndex {
    idx.prices_ms.insert(G.into(), prices.iter().map(|(r, p)| (r.to_string(), *p)).collect());
    idx
}

fn region_of(d: &Decision) -> &str {
    match &d.outcome {
        Outcome::Place { region, .. } => region,
        o => panic!("expected a placement, got {o:?}"),
    }
}

fn candidate<'a>(d: &'a Decision, region: &str) -> &'a RegionCandidate {
    d.explanation.regions.iter().find(|c| c.region == region).unwrap()
}

#[test]
fn a_price_moves_a_player_who_loses_little_and_is_explained() {
    let idx = index(vec![rack("e1", "east", 3), rack("w1", "west", 3)]);
    let p = req(player(&[("east", 10.0), ("west", 15.0)]));
    assert_eq!(region_of(&decide(&idx, &Game::new(G), &p, 30_000)), "east");

    let d = decide(&priced(idx.clone(), &[("east", 10.0)]), &Game::new(G), &p, 30_000);
    assert_eq!(region_of(&d), "west", "15 ms beats 10 + 10 ms");
    assert_eq!(candidate(&d, "east").price_ms, 10.0);
    assert_eq!(candidate(&d, "west").price_ms, 0.0);
    let why = &candidate(&d, "east").rejected.as_ref().unwrap().message;
    assert!(why.contains("price of 10.0 ms"), "{why}");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["explanation"]["regions"][1]["price_ms"], 10.0);

    // A price smaller than the difference does not move it.
    let d = decide(&priced(idx, &[("east", 4.0)]), &Game::new(G), &p, 30_000);
    assert_eq!(region_of(&d), "east");
}

#[test]
fn zero_or_absent_prices_decide_as_without_prices() {
    let idx = index(vec![rack("e1", "east", 3), rack("w1", "west", 3)]);
    let p = req(player(&[("east", 10.0), ("west", 15.0)]));
    let plain = decide(&idx, &Game::new(G), &p, 30_000);
    for prices in [&[("east", 0.0), ("west", 0.0)][..], &[("north", 50.0)][..], &[("east", f64::NAN)][..]] {
        assert_eq!(decide(&priced(idx.clone(), prices), &Game::new(G), &p, 30_000), plain, "{prices:?}");
    }
    let mut other = idx.clone();
    other.prices_ms.insert("another-game".into(), BTreeMap::from([("east".into(), 50.0)]));
    assert_eq!(decide(&other, &Game::new(G), &p, 30_000), plain);
}

#[test]
fn a_price_can_move_a_scarce_region_out_of_the_first_tier() {
    // 38 ms to east is within the preferred 40 ms, 42 ms to west is not: east ranks first.
    let idx = index(vec![rack("e1", "east", 3), rack("w1", "west", 3)]);
    let p = req(player(&[("east", 38.0), ("west", 42.0)]));
    assert_eq!(region_of(&decide(&idx, &Game::new(G), &p, 30_000)), "east");
    // Priced at 8 ms, east's effective 46 ms is outside the tier too, and above west's 42.
    let d = decide(&priced(idx, &[("east", 8.0)]), &Game::new(G), &p, 30_000);
    assert_eq!(region_of(&d), "west");
    assert!(!candidate(&d, "east").preferred);
}

#[test]
fn a_price_never_lets_a_region_pass_the_cap_nor_fail_it() {
    let idx = index(vec![rack("e1", "east", 3), rack("w1", "west", 3)]);
    // East is above the 80 ms cap: a huge price on west does not let east in.
    let p = req(player(&[("east", 90.0), ("west", 70.0)]));
    let d = decide(&priced(idx.clone(), &[("west", 1000.0)]), &Game::new(G), &p, 30_000);
    assert_eq!(region_of(&d), "west", "west's 70 ms + 1000 ms is still within the cap");
    let east = candidate(&d, "east").rejected.as_ref().unwrap();
    assert_eq!(east.code, ReasonCode::RttOverCap);
    // Negative prices are ignored: they cannot make a region look closer than it is.
    let d = decide(&priced(idx, &[("east", -50.0), ("west", 0.0)]), &Game::new(G), &p, 30_000);
    assert_eq!(region_of(&d), "west");
    assert_eq!(candidate(&d, "east").rejected.as_ref().unwrap().code, ReasonCode::RttOverCap);
}
