//! What names a connection and what the trace says of it: ids fresh and uniform, labels and codes
//! of lost transports, the time an answer took.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use clientmq_core::{
    Admission, Config, ConnectionId, EventKind, Gateway, Input, LostReason, Peer, Reply, RequestOutcome,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::{Rng, TryRng};

use crate::harness::Harness;

/// Fills each request for bytes from a fresh `StdRng` seeded with the next of `seeds`: the same
/// seed twice draws the same id twice.
struct Seeds(VecDeque<u64>);

impl TryRng for Seeds {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let seed = self.0.pop_front().expect("enough seeds");
        StdRng::seed_from_u64(seed).fill_bytes(dst);
        Ok(())
    }
}

#[test]
fn a_drawn_id_already_in_use_or_recently_ended_is_drawn_again() {
    let t0 = Instant::now();
    // 64 random bytes hold 32 usable ones, so each id takes one fill.
    let rng = Seeds(VecDeque::from([1, 1, 2, 2, 1, 3]));
    let mut gw = Gateway::new(Config::default(), Box::new(rng), t0).unwrap();
    let peer = Peer { addr: "10.0.0.1:5000".parse().unwrap(), headers: Vec::new() };
    let open = |gw: &mut Gateway| match gw.open(&peer, t0) {
        Admission::Accepted(id) => id,
        other => panic!("{other:?}"),
    };
    let a = open(&mut gw);
    let b = open(&mut gw);
    assert_ne!(a, b, "the second draw of seed 1 is in use: drawn again");
    gw.handle(Input::TransportLost { conn: b, reason: LostReason::Eof }, t0);
    let c = open(&mut gw);
    assert!(c != a && c != b, "seed 2 again names a connection that just ended: drawn again");
}

#[test]
fn ids_use_the_whole_alphabet() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.extend(ConnectionId::random(&mut rng).as_str().chars());
    }
    assert_eq!(seen.len(), 62, "{seen:?}");
    let id = ConnectionId::random(&mut rng);
    assert_eq!(format!("{id:?}"), format!("ConnectionId({id})"));
}

/// Ids are uniform over the alphabet: a byte that `% 62` would map unevenly is redrawn, so no
/// character is likelier than another (a guessable id is a session someone else can resume).
#[test]
fn ids_are_uniform_over_the_alphabet() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut counts = std::collections::BTreeMap::<char, f64>::new();
    let draws = 10_000;
    for _ in 0..draws {
        for c in ConnectionId::random(&mut rng).as_str().chars() {
            *counts.entry(c).or_default() += 1.0;
        }
    }
    let n = (draws * clientmq_core::ID_LEN) as f64;
    let p = 1.0 / 62.0;
    let sigma = (n * p * (1.0 - p)).sqrt();
    for (c, count) in counts {
        // Six standard deviations (~430 in 320,000): one favoured character of a biased draw
        // (5 byte values of 249 instead of 4 of 248) is ~1,260 over.
        assert!((count - n * p).abs() < 6.0 * sigma, "{c:?} drawn {count} times of {n}, expected {}", n * p);
    }
}

#[test]
fn lost_transports_have_distinct_labels_and_their_codes() {
    let all = [
        (LostReason::Eof, "eof", 1006),
        (LostReason::Error, "error", 1006),
        (LostReason::Protocol, "protocol", 1002),
        (LostReason::TooBig, "too-big", 1009),
        (LostReason::NotUtf8, "not-utf8", 1007),
    ];
    for (reason, label, code) in all {
        assert_eq!((reason.label(), reason.code()), (label, code), "{reason:?}");
    }
}

#[test]
fn the_gateway_keeps_the_config_it_was_given() {
    let config = Config { max_connections: 7, max_requests_per_sec: 3, ..Config::default() };
    let h = Harness::new(config);
    assert_eq!((h.gw.config().max_connections, h.gw.config().max_requests_per_sec), (7, 3));
}

#[test]
fn an_answer_is_traced_with_the_time_it_took() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    h.request(a, "C0", "x.Y", vec![], clientmq_core::Encoding::Binary);
    let token = h.backend_tokens()[0].0;
    h.advance(Duration::from_millis(250));
    h.input(Input::BackendReply { token, result: Ok(Reply { reply_type: String::new(), payload: vec![] }) });
    let took: Vec<Duration> = h
        .events_of(a)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Answered { outcome: RequestOutcome::Ok, elapsed, .. } => Some(*elapsed),
            _ => None,
        })
        .collect();
    assert_eq!(took, vec![Duration::from_millis(250)]);
}
