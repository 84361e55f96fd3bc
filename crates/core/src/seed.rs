//! Seeds derived by name. A process, or a simulated run, has one root seed; every part that
//! draws randomness (a shard's connection ids, the chat state's session ids, a simulated host, the
//! simulated network, explore's schedule) takes its own seed from the root by its name, as
//! TigerBeetle's simulator does. Adding a part never shifts another's draws, and no two parts
//! share a stream by an accident of arithmetic (`seed + index` of one part meeting `seed + 1` of
//! another).

/// The seed of the part called `name` under `root`: FNV-1a of the name, folded into the root
/// through SplitMix64's finaliser. Names are paths by convention: `shard/0`, `gw1/2`, `net`.
pub fn derive(root: u64, name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(root ^ mix(hash))
}

/// SplitMix64's output function: a bijection on `u64` that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::derive;

    #[test]
    fn the_same_root_and_name_give_the_same_seed() {
        assert_eq!(derive(7, "shard/0"), derive(7, "shard/0"));
        // Pinned: a trace replays byte for byte only while this function does not change.
        assert_eq!(derive(42, "shard/0"), 0x040c_ef8f_d2e8_0b1a);
    }

    #[test]
    fn names_and_roots_each_give_distinct_seeds() {
        let mut seen = BTreeSet::new();
        for root in 0..64u64 {
            for part in ["net", "chat", "explore/schedule", "explore/fleet"] {
                assert!(seen.insert(derive(root, part)), "{root} {part}");
            }
            for n in 0..64 {
                assert!(seen.insert(derive(root, &format!("shard/{n}"))), "{root} shard/{n}");
                assert!(seen.insert(derive(root, &format!("gw1/{n}"))), "{root} gw1/{n}");
            }
        }
        // Neighbouring roots and names do not give neighbouring seeds.
        assert!((derive(1, "shard/0") ^ derive(2, "shard/0")).count_ones() > 8);
        assert!((derive(1, "shard/0") ^ derive(1, "shard/1")).count_ones() > 8);
    }
}
