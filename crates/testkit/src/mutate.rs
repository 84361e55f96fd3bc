//! The fuzz harnesses' common parts (shared by `crates/core/tests/fuzz.rs` and
//! `crates/server/tests/fuzz.rs`): a seeded byte mutator in the manner of libFuzzer's, the case
//! count and seed from the environment, and a loop that reports the input of a failing case.
//!
//! A harness is deterministic: `FUZZ_SEED` (default 0) and the case number name every input, so a
//! failure prints what it needs to be replayed (`FUZZ_SEED=<seed> FUZZ_FROM=<case> FUZZ_CASES=1`).
#![allow(dead_code)] // each harness uses a part

use std::collections::BTreeMap;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// Values that break parsers more often than random ones.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, b'\r', b'\n', b' ', b'\t', b':', b'=', b'"', b'\\', b'{', b'}', b'[',
    b']', b',', b'.', b'/', b'%', b'+', b'-', b'0', b'9', b'e', b'E', 0xc3, 0xe2, 0xf0,
];

/// How many cases to run (`FUZZ_CASES`, default `default`), from which case (`FUZZ_FROM`), and
/// the seed (`FUZZ_SEED`).
pub struct Plan {
    pub cases: u64,
    pub from: u64,
    pub seed: u64,
}

impl Plan {
    pub fn from_env(default: u64) -> Plan {
        let var = |name: &str, default: u64| {
            std::env::var(name).ok().map_or(default, |v| {
                v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v}: not a number"))
            })
        };
        Plan { cases: var("FUZZ_CASES", default), from: var("FUZZ_FROM", 0), seed: var("FUZZ_SEED", 0) }
    }

    /// The generator of case `case`: its own stream, so any case replays alone.
    pub fn rng(&self, case: u64) -> SmallRng {
        SmallRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ case)
    }

    /// Runs `check` on the input `generate` makes for every case; a panic or a broken property
    /// (an `Err`) stops the run with the case number, the replay command and `show(input)`. The
    /// label `check` returns for a case (what the target answered) is counted. Prints progress
    /// about every 10 s and a summary at the end. Returns how long it took.
    pub fn run<I, G, F>(
        &self,
        target: &str,
        mut generate: G,
        mut check: F,
        show: impl Fn(&I) -> String,
    ) -> Duration
    where
        G: FnMut(&mut SmallRng) -> I,
        F: FnMut(&I, &mut SmallRng) -> Result<&'static str, String>,
    {
        let started = Instant::now();
        let mut report = started;
        let mut answers: BTreeMap<&'static str, u64> = BTreeMap::new();
        for case in self.from..self.from + self.cases {
            let mut rng = self.rng(case);
            let input = generate(&mut rng);
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&input, &mut rng)));
            let broken = match outcome {
                Ok(Ok(answer)) => {
                    *answers.entry(answer).or_default() += 1;
                    None
                }
                Ok(Err(property)) => Some(property),
                Err(panic) => Some(format!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default()
                )),
            };
            if let Some(broken) = broken {
                panic!(
                    "{target}: case {case} (seed {}) failed: {broken}\nreplay: FUZZ_SEED={} FUZZ_FROM={case} \
                     FUZZ_CASES=1\ninput: {}",
                    self.seed,
                    self.seed,
                    show(&input)
                );
            }
            if report.elapsed() >= Duration::from_secs(10) {
                report = Instant::now();
                let done = case + 1 - self.from;
                eprintln!("{target}: {done} cases, {:.0?}", started.elapsed());
            }
        }
        let took = started.elapsed();
        eprintln!(
            "{target}: {} cases from {} (seed {}) in {took:.1?}: nothing found",
            self.cases, self.from, self.seed
        );
        let answers: Vec<String> = answers.iter().map(|(answer, n)| format!("{answer} {n}")).collect();
        eprintln!("{target}: answers: {}", answers.join(", "));
        took
    }
}

/// Applies one to four random mutations to `data`; `other` is a second input to splice from.
pub fn mutate(rng: &mut SmallRng, data: &mut Vec<u8>, other: &[u8], max_len: usize) {
    for _ in 0..rng.random_range(1..=4) {
        mutate_once(rng, data, other);
    }
    data.truncate(max_len);
}

fn mutate_once(rng: &mut SmallRng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    let at = |rng: &mut SmallRng| if len == 0 { 0 } else { rng.random_range(0..len) };
    match rng.random_range(0..10) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 if len > 0 => {
            let i = at(rng);
            data[i] = rng.random();
        }
        3 => {
            let i = if len == 0 { 0 } else { rng.random_range(0..=len) };
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        INTERESTING[rng.random_range(0..INTERESTING.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect();
            data.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(16));
            data.drain(i..i + n);
        }
        5 if len > 0 => {
            data.truncate(at(rng));
        }
        6 if len > 0 => {
            // Repeat a chunk: long runs, deep nesting, many fields.
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(32));
            let chunk = data[i..i + n].to_vec();
            let times = rng.random_range(1..=64);
            for _ in 0..times {
                data.splice(i..i, chunk.iter().copied());
            }
        }
        7 if !other.is_empty() => {
            // Splice a piece of another input in.
            let j = rng.random_range(0..other.len());
            let n = rng.random_range(1..=(other.len() - j).min(64));
            let i = if len == 0 { 0 } else { rng.random_range(0..=len) };
            data.splice(i..i, other[j..j + n].iter().copied());
        }
        8 if len >= 2 => {
            // Swap two bytes.
            let (i, j) = (at(rng), at(rng));
            data.swap(i, j);
        }
        _ => {
            // A little-endian or varint number somewhere.
            let i = if len == 0 { 0 } else { rng.random_range(0..=len) };
            let value: u64 = match rng.random_range(0..4) {
                0 => rng.random_range(0..300),
                1 => u64::MAX >> rng.random_range(0..64),
                2 => 1 << rng.random_range(0..64),
                _ => rng.random(),
            };
            let mut varint = Vec::new();
            let mut v = value;
            loop {
                if v < 0x80 {
                    varint.push(v as u8);
                    break;
                }
                varint.push((v as u8) | 0x80);
                v >>= 7;
            }
            data.splice(i..i, varint);
        }
    }
}

/// Random bytes, most of them short.
pub fn random_bytes(rng: &mut SmallRng, max: usize) -> Vec<u8> {
    let len =
        if rng.random_bool(0.9) { rng.random_range(0..=max.min(64)) } else { rng.random_range(0..=max) };
    (0..len).map(|_| rng.random()).collect()
}

/// A random string: ASCII, control characters, or any Unicode, sometimes long.
pub fn random_string(rng: &mut SmallRng, max: usize) -> String {
    let len =
        if rng.random_bool(0.9) { rng.random_range(0..=max.min(16)) } else { rng.random_range(0..=max) };
    (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => char::from(rng.random_range(0x20u8..0x7f)),
            1 => char::from(rng.random_range(0u8..0x20)),
            2 => char::from_u32(rng.random_range(0x80..0x800)).unwrap_or('?'),
            _ => rng.random::<char>(),
        })
        .collect()
}

/// Bytes shown for a failure report: printable ASCII as is, the rest escaped.
pub fn show_bytes(bytes: &[u8]) -> String {
    format!("{} bytes: b\"{}\"", bytes.len(), bytes.escape_ascii())
}
