//! Where an idempotency key is registered: its home units, the quorum a
//! create must hold there, and what a unit's record of a key says.
//!
//! Every create registers its key at a majority of the key's home units
//! before it writes the order, so any two creates of one key meet at a
//! home, and a unit that is down hides no key (the other homes hold it).
//! The protocol and why it is correct are in `docs/idempotency.md`; this
//! file is the pure part: which units are homes, how many must agree, and
//! how a record reads.

/// How many homes a key has (fewer only when the ring has fewer units).
pub const HOMES: usize = 3;

/// The units that can be homes of keys, fixed when the units' databases
/// first meet (it never follows the configured units, or adding a unit
/// would move keys' homes away from their records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing {
    units: Vec<u16>,
}

impl KeyRing {
    /// A ring of `units` (sorted, without repeats). `None` when empty.
    pub fn new(mut units: Vec<u16>) -> Option<Self> {
        units.sort_unstable();
        units.dedup();
        (!units.is_empty()).then_some(Self { units })
    }

    pub fn units(&self) -> &[u16] {
        &self.units
    }

    /// As stored in the units' databases: `1,2,3`.
    pub fn encode(&self) -> String {
        let ids: Vec<String> = self.units.iter().map(u16::to_string).collect();
        ids.join(",")
    }

    /// Reads [`Self::encode`]'s form; `None` unless it is exactly that.
    pub fn decode(s: &str) -> Option<Self> {
        let units: Vec<u16> = s
            .split(',')
            .map(|id| id.parse().ok())
            .collect::<Option<_>>()?;
        let ring = Self::new(units)?;
        (ring.encode() == s).then_some(ring)
    }

    /// The key's homes, best first: the `HOMES` ring units with the highest
    /// rendezvous score for the key (so a home's keys move only if the ring
    /// changes, and keys spread evenly over units).
    pub fn homes(&self, key: StableKeyHash) -> Homes {
        let mut scored: Vec<(u64, u16)> = self
            .units
            .iter()
            .map(|&u| (mix(key.0 ^ mix(u64::from(u) + 0x9e37_79b9_7f4a_7c15)), u))
            .collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        Homes {
            units: scored.into_iter().take(HOMES).map(|(_, u)| u).collect(),
        }
    }
}

/// A key's home units, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Homes {
    pub units: Vec<u16>,
}

impl Homes {
    /// How many homes make a majority.
    pub fn quorum(&self) -> usize {
        self.units.len() / 2 + 1
    }

    pub fn contains(&self, unit: u16) -> bool {
        self.units.contains(&unit)
    }

    /// How many homes other than `target` must hold a create's claim before
    /// it writes its order in `target`: a majority, counting `target`'s own
    /// record (written with the order) when `target` is a home.
    pub fn claims_needed(&self, target: u16) -> usize {
        self.quorum() - usize::from(self.contains(target))
    }
}

/// A key's hash that every engine process (and every build) computes alike:
/// FNV-1a over the key's bytes, then a finaliser. Homes must not move when a
/// process restarts, so the process-seeded hashers are no use here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StableKeyHash(u64);

impl StableKeyHash {
    pub fn of(merchant_id: &str, out_trade_no: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = merchant_id
            .bytes()
            .chain(std::iter::once(0xff)) // not a UTF-8 byte: no ambiguity
            .chain(out_trade_no.bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(mix(h))
    }
}

/// splitmix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One create's identity: random, never 0 (0 marks a fence), and kept when
/// the create moves to another unit after a failure there that certainly
/// wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt(pub i64);

impl Attempt {
    pub fn random() -> Self {
        Self(rand::random_range(1..i64::MAX))
    }
}

/// What unit `here`'s record of a key says (its `key_claims` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The key's order is in this unit, written by `attempt` in the same
    /// transaction as this record.
    Slot { attempt: Attempt },
    /// No order for the key will ever be written in this unit: a create
    /// that was in doubt here was settled as "not written".
    Fence,
    /// `attempt` may write the key's order in unit `unit` (a home's record).
    Claim { unit: u16, attempt: Attempt },
}

impl Mark {
    /// Reads a row `(unit, attempt)` stored in unit `here`.
    pub fn from_row(here: u16, unit: u16, attempt: i64) -> Self {
        match (unit == here, attempt) {
            (true, 0) => Self::Fence,
            (true, a) => Self::Slot {
                attempt: Attempt(a),
            },
            (false, a) => Self::Claim {
                unit,
                attempt: Attempt(a),
            },
        }
    }

    /// The row that stores this mark in unit `here`.
    pub fn to_row(self, here: u16) -> (u16, i64) {
        match self {
            Self::Slot { attempt } => (here, attempt.0),
            Self::Fence => (here, 0),
            Self::Claim { unit, attempt } => (unit, attempt.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(i: u32) -> StableKeyHash {
        StableKeyHash::of("m-1", &format!("k-{i}"))
    }

    #[test]
    fn the_hash_is_stable_across_processes_and_builds() {
        // A fixed value (computed independently: FNV-1a, then splitmix64): a
        // change here moves every key's homes away from
        // its records, so it is never allowed.
        assert_eq!(StableKeyHash::of("m", "k"), StableKeyHash::of("m", "k"));
        assert_eq!(StableKeyHash::of("m-1", "o-1").0, 0xd0c0_2b75_3b86_11d9);
        assert_ne!(StableKeyHash::of("ab", "c"), StableKeyHash::of("a", "bc"));
    }

    #[test]
    fn homes_spread_evenly_and_a_new_unit_moves_few_keys() {
        let ring = KeyRing::new(vec![1, 2, 3, 4]).unwrap();
        let mut per_unit = [0u32; 5];
        for i in 0..40_000 {
            let homes = ring.homes(hash(i));
            assert_eq!(homes.units.len(), 3);
            for u in homes.units {
                per_unit[u as usize] += 1;
            }
        }
        for count in &per_unit[1..] {
            // 3/4 of keys each, within 2%.
            assert!((29_400..=30_600).contains(count), "{per_unit:?}");
        }
        // Rendezvous: adding unit 5 changes only keys that rank it in their top 3.
        let grown = KeyRing::new(vec![1, 2, 3, 4, 5]).unwrap();
        for i in 0..2_000 {
            let (old, new) = (ring.homes(hash(i)), grown.homes(hash(i)));
            if !new.contains(5) {
                assert_eq!(old, new);
            }
        }
    }

    #[test]
    fn quorums_count_the_target_when_it_is_a_home() {
        let homes = Homes {
            units: vec![4, 1, 2],
        };
        assert_eq!(homes.quorum(), 2);
        assert_eq!(homes.claims_needed(1), 1);
        assert_eq!(homes.claims_needed(3), 2);
        let small = KeyRing::new(vec![7]).unwrap().homes(hash(1));
        assert_eq!((small.units.clone(), small.quorum()), (vec![7], 1));
        assert_eq!(small.claims_needed(7), 0);
        let two = KeyRing::new(vec![2, 1]).unwrap().homes(hash(1));
        assert_eq!(two.quorum(), 2);
        assert!(KeyRing::new(vec![]).is_none());
    }

    proptest! {
        /// Any two sets of homes that each hold a majority share a home:
        /// the reason two creates of one key always meet.
        #[test]
        fn any_two_majorities_share_a_home(
            n in 1usize..6, key in any::<u32>(), a in any::<u8>(), b in any::<u8>()
        ) {
            let ring = KeyRing::new((1..=n as u16).collect()).unwrap();
            let homes = ring.homes(hash(key));
            let pick = |mask: u8| -> Vec<u16> {
                homes.units.iter().enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, u)| *u).collect()
            };
            let (x, y) = (pick(a), pick(b));
            if x.len() >= homes.quorum() && y.len() >= homes.quorum() {
                prop_assert!(x.iter().any(|u| y.contains(u)));
            }
        }

        #[test]
        fn marks_survive_their_row(here in 0u16..8, unit in 0u16..8, attempt in 0i64..4) {
            let mark = Mark::from_row(here, unit, attempt);
            prop_assert_eq!(mark.to_row(here), (unit, attempt));
        }
    }
}
