//! Property tests of the whole decision: hard constraints of the level in force (whatever the
//! region prices), candidates sorted by score, determinism, and no early refusal.

use proptest::prelude::*;

use super::tests::{G, index, rack, req};
use super::*;

fn arb_rack(i: usize) -> impl Strategy<Value = Rack> {
    (
        0..3usize,
        0..3u8,
        0..4u32,
        0..3u32,
        0..3u32,
        any::<bool>(),
        0.0..1.0f64,
        proptest::option::of(0.0..0.1f64),
    )
        .prop_map(move |(region, state, warm, active, spare, x86, cpu, loss)| {
            let mut r = rack(&format!("r{i}"), ["a", "b", "c"][region], warm);
            r.state = [RackState::Online, RackState::Degraded, RackState::Unreachable][state as usize];
            r.games.insert(G.into(), GameStock { warm, active });
            r.spare_slots = spare;
            if x86 {
                r.archs = ["x86_64".to_string()].into();
            }
            r.load.cpu = cpu;
            if let Some(loss) = loss {
                r.uplinks.insert("a".into(), Uplink { rtt_ms: 5.0, loss });
            }
            r
        })
}

fn arb_case() -> impl Strategy<Value = (CapacityIndex, Request, u64)> {
    let racks = (1..12usize).prop_flat_map(|n| (0..n).map(arb_rack).collect::<Vec<_>>());
    let rtts = proptest::collection::btree_map(prop_oneof!["a", "b", "c"], 1.0..200.0f64, 0..3);
    // Region prices for the game, as the broker learns them (any, including none).
    let prices = proptest::collection::btree_map(prop_oneof!["a", "b", "c"], 0.0..100.0f64, 0..3);
    (racks, rtts, proptest::option::of(prop_oneof!["a", "b"]), 0..=30_000u64, prices).prop_map(
        |(racks, rtts, pin, left, prices)| {
            let mut r = req(Player { id: "p".into(), rtt_ms: rtts, ..Player::default() });
            r.pinned_region = pin;
            let mut idx = index(racks);
            idx.prices_ms.insert(G.into(), prices);
            (idx, r, left)
        },
    )
}

proptest! {
    #[test]
    fn chosen_racks_satisfy_the_constraints_of_their_level((idx, r, left) in arb_case()) {
        let g = Game { archs: ["aarch64".to_string()].into(), ..Game::new(G) };
        let d = decide(&idx, &g, &r, left);
        let (region, racks) = match &d.outcome {
            Outcome::Place { region, racks } => (region.clone(), racks.clone()),
            Outcome::Queue { region: Some(region), rack: Some(rack), .. } => (region.clone(), vec![rack.clone()]),
            _ => return Ok(()),
        };
        prop_assert!(!racks.is_empty());
        let pin_holds = d.limits.level != Level::AnyRegion;
        if let (Some(pin), true) = (&r.pinned_region, pin_holds) {
            prop_assert_eq!(&region, pin);
        } else if !r.player.rtt_ms.is_empty() {
            match (r.player.rtt_ms.get(&region), d.limits.max_rtt_ms) {
                (Some(rtt), Some(cap)) => prop_assert!(*rtt <= cap),
                (None, _) => prop_assert!(d.limits.unmeasured_ok),
                _ => {}
            }
        }
        for id in &racks {
            let k = idx.racks().find(|k| &k.id == id).unwrap();
            prop_assert_eq!(&k.region, &region);
            prop_assert!(k.state != RackState::Unreachable);
            prop_assert!(k.matches(&g));
            if let Some(u) = k.uplinks.get("a").filter(|_| d.explanation.player_region.as_deref() == Some("a")) {
                prop_assert!(u.loss <= d.limits.uplink_max_loss);
            }
            if matches!(d.outcome, Outcome::Place { .. }) {
                prop_assert!(k.warm(G) > 0);
            }
        }
    }

    #[test]
    fn candidates_are_sorted_by_score_and_decisions_deterministic((idx, r, left) in arb_case()) {
        let g = Game::new(G);
        let d = decide(&idx, &g, &r, left);
        let scored: Vec<f64> = d.explanation.racks.iter().filter_map(|c| c.score).collect();
        prop_assert!(scored.windows(2).all(|w| w[0] >= w[1]), "{:?}", scored);
        let regions: Vec<f64> = d.explanation.regions.iter().filter_map(|c| c.score).collect();
        prop_assert!(regions.windows(2).all(|w| w[0] >= w[1]), "{:?}", regions);
        if let Outcome::Place { racks, .. } = &d.outcome {
            let listed: Vec<&String> = d.explanation.racks.iter().take(racks.len()).map(|c| &c.rack).collect();
            prop_assert_eq!(listed, racks.iter().collect::<Vec<_>>());
        }
        prop_assert!(d.explanation.rejections().all(|r| !r.message.is_empty()));
        prop_assert_eq!(&decide(&idx, &g, &r, left), &d);
        prop_assert_eq!(
            serde_json::to_string(&decide(&idx.clone(), &g.clone(), &r.clone(), left)).unwrap(),
            serde_json::to_string(&d).unwrap()
        );
    }

    #[test]
    fn never_refuses_while_something_could_serve((idx, r, left) in arb_case()) {
        let g = Game::new(G);
        let d = decide(&idx, &g, &r, left);
        if let Outcome::NoCapacity { code } = d.outcome {
            prop_assert!(left == 0 || idx.racks().all(|k| !k.could_host(&g)), "{:?}", code);
        } else {
            prop_assert!(left > 0);
        }
    }
}
