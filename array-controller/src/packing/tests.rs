//! Fixtures shared by the packing unit tests, and the property tests of the whole packer:
//! random mixed racks and random sequences of place and remove.

use std::collections::{BTreeMap, BTreeSet};

use api::facts::{BoardFacts, CpuCluster, CpuTopology, DiskFacts, DockerFacts, KernelFacts, PortRange};
use api::rack::Pinning;
use proptest::prelude::*;

use super::resources::{MILLICORES_PER_CPU, cpu_split};
use super::*;

/// Facts of an 8-CPU board: CPUs 0-3 little (capacity 512), 4-7 big (1024), one GPU and one
/// encoder node, ports 20000-20099.
pub(crate) fn facts(arch: &str, soc: Option<&str>, memory_mib: u64) -> BoardFacts {
    topology_facts("b", arch, soc, memory_mib, 8, Some(4))
}

/// Facts of a board with `cpus` CPUs; with `little = Some(n)` the first `n` are a little cluster.
pub(crate) fn topology_facts(
    id: &str,
    arch: &str,
    soc: Option<&str>,
    memory_mib: u64,
    cpus: u32,
    little: Option<u32>,
) -> BoardFacts {
    let all: Vec<u32> = (0..cpus).collect();
    let clusters = match little {
        Some(n) => vec![
            CpuCluster { cpus: (n..cpus).collect(), capacity: Some(1024) },
            CpuCluster { cpus: (0..n).collect(), capacity: Some(512) },
        ],
        None => vec![CpuCluster { cpus: all.clone(), capacity: None }],
    };
    BoardFacts {
        board_id: id.to_string(),
        arch: arch.to_string(),
        soc_model: soc.map(str::to_string),
        cpu: CpuTopology { cpus: all, clusters },
        memory_mib,
        disk: DiskFacts { mount: "/".into(), total_mib: 100_000, available_mib: 50_000 },
        gpu_devices: vec!["/dev/mali0".into()],
        encoder_devices: vec!["/dev/mpp_service".into()],
        kernel: KernelFacts {
            release: "6.1".into(),
            page_size: 4096,
            binderfs: true,
            binder_devices: vec![],
            memfd: true,
            ashmem: false,
            inotify_max_user_instances: None,
            inotify_max_user_watches: None,
        },
        docker: DockerFacts { reachable: true, version: None, api_version: None, cgroup_version: Some(2) },
        addresses: vec!["10.0.0.2".into()],
        host_port_range: PortRange { start: 20000, end: 20099 },
        overridden: vec![],
    }
}

/// A board class with the given reserve, GPU and slots.
pub(crate) fn class(
    reserve_mc: u32,
    gpu_kind: Option<&str>,
    gpu_slots: u32,
    encoder_slots: u32,
) -> BoardClass {
    BoardClass {
        name: "test".into(),
        reserve: HostReserve { millicores: reserve_mc, memory_mib: 512 },
        gpu_kind: gpu_kind.map(str::to_string),
        gpu_slots,
        encoder_slots,
        labels: BTreeMap::new(),
        android_kernel: true,
    }
}

/// A request for `millicores` and `memory_mib` on any architecture, nothing else.
pub(crate) fn request(millicores: u32, memory_mib: u64) -> PlacementRequest {
    PlacementRequest {
        millicores,
        memory_mib,
        gpu_slots: 0,
        encoder_slots: 0,
        pinning: Pinning::Any,
        archs: ["aarch64", "x86_64"].into_iter().map(String::from).collect(),
        gpu_kind: None,
        labels: BTreeMap::new(),
        anti_affinity: None,
    }
}

/// A placement on board `b` of `millicores` over `cpus` with 1 GiB, one GPU slot and host
/// `ports`, no encoder slot and no anti-affinity key.
pub(crate) fn placement(cpus: &[u32], millicores: u32, ports: (u16, u16)) -> Placement {
    Placement {
        board_id: "b".into(),
        cpus: cpus.to_vec(),
        millicores,
        memory_mib: 1024,
        gpu_slots: 1,
        encoder_slots: 0,
        ports: api::instance::InstancePorts { adb: ports.0, stream: ports.1 },
        group: None,
    }
}

/// Independent oracle: can `board` hold `req` as it stands? Checks every k-subset of CPUs.
fn could_hold(board: &BoardState, req: &PlacementRequest) -> bool {
    let cap = &board.capacity;
    let sum = |f: fn(&Placement) -> u64| board.placed.iter().map(f).sum::<u64>();
    let static_ok = !board.cordoned
        && board.schedulable
        && req.archs.contains(&board.arch)
        && req.gpu_kind.as_ref().is_none_or(|k| board.gpu_kind.as_ref() == Some(k))
        && req.labels.iter().all(|(k, v)| board.labels.get(k) == Some(v))
        && req.anti_affinity.as_ref().is_none_or(|aa| {
            (board.placed.iter().filter(|p| p.group.as_ref() == Some(&aa.key)).count() as u32)
                < aa.max_per_board
        });
    let used_ports: BTreeSet<u16> = board.placed.iter().flat_map(|p| [p.ports.adb, p.ports.stream]).collect();
    let free_ports = (cap.ports.start..=cap.ports.end).filter(|p| !used_ports.contains(p)).count();
    let totals_ok = sum(|p| p.memory_mib) + req.memory_mib <= cap.memory_mib
        && sum(|p| u64::from(p.millicores)) + u64::from(req.millicores) <= u64::from(cap.millicores)
        && sum(|p| u64::from(p.gpu_slots)) + u64::from(req.gpu_slots) <= u64::from(cap.gpu_slots)
        && sum(|p| u64::from(p.encoder_slots)) + u64::from(req.encoder_slots) <= u64::from(cap.encoder_slots)
        && free_ports >= 2;
    if !(static_ok && totals_ok) {
        return false;
    }
    let mut used: BTreeMap<u32, u32> = BTreeMap::new();
    for p in &board.placed {
        for (cpu, charge) in resources::cpu_charges(&p.cpus, p.millicores) {
            *used.entry(cpu).or_default() += charge;
        }
    }
    let allowed: Vec<(u32, u32)> = cap
        .cpus
        .iter()
        .filter(|c| req.pinning == Pinning::Any || c.big)
        .map(|c| (c.id, c.millicores - used.get(&c.id).copied().unwrap_or(0)))
        .collect();
    let (k, share, rem) = cpu_split(req.millicores);
    // Every k-subset of the allowed CPUs (ascending ids), the remainder on the lowest ones.
    (0u64..1 << allowed.len()).filter(|mask| mask.count_ones() as usize == k).any(|mask| {
        let chosen = allowed.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| c);
        chosen.enumerate().all(|(i, &(_, free))| free >= share + u32::from((i as u32) < rem))
    })
}

fn arb_board(index: usize) -> impl Strategy<Value = BoardState> {
    (
        prop_oneof![
            Just(("aarch64", 8u32, Some(4u32))),
            Just(("aarch64", 4, None)),
            Just(("x86_64", 12, None))
        ],
        prop_oneof![Just(4096u64), Just(8192), Just(16384)],
        (0u32..2500, prop::option::of(prop_oneof![Just("mali-g610"), Just("nvidia-t4")]), 0u32..6, 0u32..6),
        (
            prop::option::of(prop_oneof![Just("a"), Just("b")]),
            2u16..24,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.9),
        ),
    )
        .prop_map(
            move |(
                (arch, cpus, little),
                memory,
                (reserve, gpu, gpu_slots, enc),
                (site, ports, cordoned, ok),
            )| {
                let mut f = topology_facts(&format!("b{index}"), arch, None, memory, cpus, little);
                f.host_port_range = PortRange { start: 30000, end: 30000 + ports - 1 };
                let mut c = class(reserve, gpu, gpu_slots, enc);
                if let Some(site) = site {
                    c.labels.insert("site".into(), site.into());
                }
                BoardState { cordoned, schedulable: ok, ..BoardState::new(&f, &c) }
            },
        )
}

fn arb_request() -> impl Strategy<Value = PlacementRequest> {
    (
        (
            prop_oneof![1u32..3001, Just(1000u32), Just(1001), Just(500), Just(2000)],
            128u64..3000,
            0u32..3,
            0u32..3,
        ),
        (
            prop_oneof![Just(Pinning::Any), Just(Pinning::Big)],
            prop_oneof![
                3 => Just(vec!["aarch64", "x86_64"]),
                1 => prop::sample::subsequence(vec!["aarch64", "x86_64"], 0..=2),
            ],
        ),
        prop::option::weighted(0.2, prop_oneof![Just("mali-g610"), Just("nvidia-t4")]),
        prop::option::weighted(0.2, prop_oneof![Just("a"), Just("b")]),
        prop::option::weighted(0.3, (prop_oneof![Just("g1"), Just("g2")], 1u32..4)),
    )
        .prop_map(
            |((millicores, memory_mib, gpu_slots, encoder_slots), (pinning, archs), gpu, site, aa)| {
                PlacementRequest {
                    millicores,
                    memory_mib,
                    gpu_slots,
                    encoder_slots,
                    pinning,
                    archs: archs.into_iter().map(String::from).collect(),
                    gpu_kind: gpu.map(String::from),
                    labels: site.map(|s| [("site".to_string(), s.to_string())].into()).unwrap_or_default(),
                    anti_affinity: aa.map(|(key, max)| AntiAffinity { key: key.into(), max_per_board: max }),
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Place(PlacementRequest, Policy),
    Remove(usize, usize),
}

fn arb_rack() -> impl Strategy<Value = Vec<BoardState>> {
    (1usize..8).prop_flat_map(|n| (0..n).map(arb_board).collect::<Vec<_>>())
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (arb_request(), prop_oneof![Just(Policy::FillFirst), Just(Policy::Spread)]).prop_map(|(r, p)| Op::Place(r, p)),
        1 => (0usize..64, 0usize..64).prop_map(|(b, i)| Op::Remove(b, i)),
    ];
    prop::collection::vec(op, 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_racks_are_never_overcommitted_and_place_is_complete(mut boards in arb_rack(), ops in arb_ops()) {
        // The request behind each placement, to check architecture and big pinning.
        let mut requests: Vec<Vec<PlacementRequest>> = vec![Vec::new(); boards.len()];
        for op in ops {
            match op {
                Op::Place(req, policy) => match place(&boards, &req, policy) {
                    Ok(p) => {
                        let i = boards.iter().position(|b| b.id == p.board_id).expect("placed on a known board");
                        let b = &boards[i];
                        prop_assert!(could_hold(b, &req), "placed on {} which cannot hold it", b.id);
                        prop_assert!(!b.cordoned && b.schedulable);
                        prop_assert!(req.archs.contains(&b.arch));
                        prop_assert_eq!(p.cpus.len(), cpu_split(req.millicores).0);
                        if req.pinning == Pinning::Big {
                            prop_assert!(p.cpus.iter().all(|c| b.capacity.big_cpus().contains(c)));
                        }
                        boards[i].placed.push(p);
                        requests[i].push(req);
                    }
                    Err(no_fit) => {
                        prop_assert_eq!(no_fit.rejected.len(), boards.len());
                        for b in &boards {
                            prop_assert!(!could_hold(b, &req), "{} could hold it but: {}", b.id, no_fit);
                        }
                    }
                },
                Op::Remove(b, i) => {
                    let b = b % boards.len();
                    if !boards[b].placed.is_empty() {
                        let i = i % boards[b].placed.len();
                        boards[b].placed.remove(i);
                        requests[b].remove(i);
                    }
                }
            }
            for (b, reqs) in boards.iter().zip(&requests) {
                prop_assert!(check_board(b).is_ok(), "{}", check_board(b).unwrap_err());
                let mut ports = BTreeSet::new();
                for (p, r) in b.placed.iter().zip(reqs) {
                    prop_assert!(ports.insert(p.ports.adb) && ports.insert(p.ports.stream));
                    prop_assert!(r.archs.contains(&b.arch));
                }
                let per_cpu = BoardUsage::of(&b.placed).cpu_millicores;
                prop_assert!(per_cpu.values().all(|&m| m <= MILLICORES_PER_CPU));
            }
        }
    }

    #[test]
    fn place_many_matches_placing_one_at_a_time(boards in arb_rack(), req in arb_request(), n in 0usize..12) {
        let mut many = boards.clone();
        let batch = place_many(&mut many, &req, n, Policy::FillFirst);
        let mut one = boards;
        let mut placed = Vec::new();
        for _ in 0..n {
            let Ok(p) = place(&one, &req, Policy::FillFirst) else { break };
            one.iter_mut().find(|b| b.id == p.board_id).unwrap().placed.push(p.clone());
            placed.push(p);
        }
        prop_assert_eq!(batch.failure.is_none(), placed.len() == n);
        prop_assert_eq!(batch.placed, placed);
        prop_assert_eq!(many, one);
    }

    #[test]
    fn place_all_never_overcommits_and_respects_constraints(
        mut boards in arb_rack(),
        demand in prop::collection::vec((arb_request(), 0usize..8), 0..5),
        spread in any::<bool>(),
    ) {
        let policy = if spread { Policy::Spread } else { Policy::FillFirst };
        let before = boards.clone();
        let batches = place_all(&mut boards, &demand, policy);
        prop_assert_eq!(batches.len(), demand.len());
        for ((req, count), batch) in demand.iter().zip(&batches) {
            prop_assert_eq!(batch.failure.is_none(), batch.placed.len() == *count);
            for p in &batch.placed {
                let b = boards.iter().find(|b| b.id == p.board_id).expect("a board of the rack");
                prop_assert!(!b.cordoned && b.schedulable && req.archs.contains(&b.arch));
                prop_assert!(req.gpu_kind.as_ref().is_none_or(|k| b.gpu_kind.as_ref() == Some(k)));
            }
        }
        for (b, old) in boards.iter().zip(&before) {
            prop_assert!(check_board(b).is_ok(), "{}", check_board(b).unwrap_err());
            // What ran before the batch never moves.
            prop_assert_eq!(&b.placed[..old.placed.len()], &old.placed[..]);
            let added = b.placed.len() - old.placed.len();
            prop_assert_eq!(added, batches.iter().flat_map(|x| &x.placed).filter(|p| p.board_id == b.id).count());
        }
    }

    #[test]
    fn the_plan_never_overcommits_and_its_bound_holds(
        boards in arb_rack(),
        demand in prop::collection::vec((arb_request(), 0usize..8), 0..5),
        spread in any::<bool>(),
    ) {
        let policy = if spread { Policy::Spread } else { Policy::FillFirst };
        let mut planned = boards.clone();
        let Some(plan) = plan::place_planned(&mut planned, &demand, policy) else {
            prop_assert_eq!(&planned, &boards);
            return Ok(());
        };
        prop_assert_eq!(plan.batches.len(), demand.len());
        for ((req, count), batch) in demand.iter().zip(&plan.batches) {
            prop_assert_eq!(batch.failure.is_none(), batch.placed.len() == *count);
            for p in &batch.placed {
                let b = planned.iter().find(|b| b.id == p.board_id).expect("a board of the rack");
                prop_assert!(!b.cordoned && b.schedulable && req.archs.contains(&b.arch));
                prop_assert!(req.gpu_kind.as_ref().is_none_or(|k| b.gpu_kind.as_ref() == Some(k)));
                prop_assert!(req.labels.iter().all(|(k, v)| b.labels.get(k) == Some(v)));
                prop_assert_eq!(p.cpus.len(), cpu_split(req.millicores).0);
                if req.pinning == Pinning::Big {
                    prop_assert!(p.cpus.iter().all(|c| b.capacity.big_cpus().contains(c)));
                }
            }
        }
        for b in &planned {
            prop_assert!(check_board(b).is_ok(), "{}", check_board(b).unwrap_err());
            // No key on a board more often than the largest limit any request gives it.
            for (key, n) in BoardUsage::of(&b.placed).groups {
                let limits = demand.iter().filter_map(|(r, _)| r.anti_affinity.as_ref()).filter(|aa| aa.key == key);
                prop_assert!(n <= limits.map(|aa| aa.max_per_board).max().unwrap_or(u32::MAX));
            }
        }
        // place_all keeps the plan when it places more, and nothing places more than the bound.
        let placed: usize = plan.batches.iter().map(|b| b.placed.len()).sum();
        let mut all = boards;
        let best: usize = place_all(&mut all, &demand, policy).iter().map(|b| b.placed.len()).sum();
        prop_assert!(best >= placed, "place_all {} < plan {}", best, placed);
        if let Some(bound) = plan.bound {
            prop_assert!(best <= bound, "place_all {} > bound {}", best, bound);
        }
    }

    #[test]
    fn allocatable_takes_the_reserve_from_little_cores_first(
        cpus in 1u32..16, little in 0u32..16, reserve in 0u32..20_000,
    ) {
        let little = little.min(cpus - 1);
        let f = topology_facts("b", "aarch64", None, 4096, cpus, (little > 0).then_some(little));
        let cap = allocatable(&f, &class(reserve, None, 0, 0));
        prop_assert_eq!(cap.millicores, (cpus * MILLICORES_PER_CPU).saturating_sub(reserve));
        prop_assert_eq!(cap.millicores, cap.cpus.iter().map(|c| c.millicores).sum::<u32>());
        if reserve <= little * MILLICORES_PER_CPU {
            prop_assert!(cap.cpus.iter().filter(|c| c.big).all(|c| c.millicores == MILLICORES_PER_CPU));
        }
        prop_assert!(cap.cpus.iter().all(|c| c.millicores > 0 && c.millicores <= MILLICORES_PER_CPU));
    }
}
