//! Long-run fuzzing of the HTTP request head reader (`http::read_head`), what every socket's
//! first bytes reach. Not part of `cargo test` (`#[ignore]`); `just fuzz CASES` runs it with the
//! core's harnesses (`crates/core/tests/fuzz.rs`, whose mutator this shares). `FUZZ_CASES`,
//! `FUZZ_SEED` and `FUZZ_FROM` steer a run; a failure prints its replay command and input.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use clientmq_server::http::{Head, HeadError, MAX_HEAD, Prefixed, read_head};
use clientmq_testkit::mutate::{Plan, mutate, random_bytes, show_bytes};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const DEFAULT_CASES: u64 = 100_000;

/// Bytes handed out in the chunk sizes of a schedule, as TCP segments would: always ready.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunks: &'a [usize],
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let chunk = this.chunks.get(this.next).copied().unwrap_or(usize::MAX).max(1);
        this.next += 1;
        let n = chunk.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose every read is ready: one poll finishes it.
fn now<F: Future>(future: F) -> F::Output {
    match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a read on a ready stream was pending"),
    }
}

#[derive(Debug)]
struct HeadCase {
    input: Vec<u8>,
    /// A second way the same bytes may arrive.
    chunks: Vec<usize>,
}

// Each list starts with well-formed choices; the last `BAD` of each are not.
const BAD: usize = 2;
const METHODS: &[&str] = &["GET", "POST", "HEAD", "OPTIONS", "get", "CONNECT", "G\0T", ""];
const PATHS: &[&str] =
    &["/ws", "/metrics", "/healthz", "/readyz", "*", "/ws?x=1", "/%00", "http://h/ws", "/a b", ""];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"];
const NAMES: &[&str] = &[
    "Host",
    "Connection",
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Origin",
    "X-Forwarded-For",
    "Content-Length",
    "Transfer-Encoding",
    "Bad Name",
    "",
];
const VALUES: &[&str] = &[
    "Upgrade",
    "keep-alive, Upgrade",
    "websocket",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "13",
    "8",
    "https://app.example",
    "203.0.113.5, 10.0.0.1",
    "0",
    "chunked",
    "\u{e9}",
    "a\tb",
    "",
    "a\rb",
    "\u{0}",
];

/// A request head of plausible parts, sometimes long, sometimes with bytes after it.
fn plausible_head(rng: &mut SmallRng) -> Vec<u8> {
    let pick = |rng: &mut SmallRng, from: &[&str]| {
        let choices = if rng.random_bool(0.97) { from.len() - BAD } else { from.len() };
        from[rng.random_range(0..choices)].to_owned()
    };
    let (method, path, version) = (pick(rng, METHODS), pick(rng, PATHS), pick(rng, VERSIONS));
    let eol = if rng.random_bool(0.9) { "\r\n" } else { "\n" };
    let mut head = format!("{method} {path} {version}{eol}");
    let headers = if rng.random_bool(0.9) { rng.random_range(0..10) } else { rng.random_range(0..70) };
    for _ in 0..headers {
        head.push_str(&format!("{}: {}{eol}", pick(rng, NAMES), pick(rng, VALUES)));
    }
    if rng.random_bool(0.1) {
        // Near the size bound, on either side of it.
        let pad = rng.random_range(MAX_HEAD.saturating_sub(head.len() + 64)..MAX_HEAD + 1200);
        head.push_str(&format!("X-Pad: {}{eol}", "a".repeat(pad.saturating_sub(head.len()))));
    }
    if rng.random_bool(0.95) {
        head.push_str(eol);
    }
    let mut bytes = head.into_bytes();
    if rng.random_bool(0.3) {
        bytes.extend(random_bytes(rng, 64));
    }
    bytes
}

fn head_case(rng: &mut SmallRng) -> HeadCase {
    let input = match rng.random_range(0..10) {
        0..5 => plausible_head(rng),
        5..9 => {
            let mut bytes = plausible_head(rng);
            let other = plausible_head(rng);
            mutate(rng, &mut bytes, &other, 3 * MAX_HEAD);
            bytes
        }
        _ => random_bytes(rng, 2048),
    };
    // At most ~64 reads, so a case stays cheap (the reader parses the whole buffer per read).
    let smallest = input.len() / 64 + 1;
    let chunks = (0..80)
        .map(|_| match rng.random_range(0..4) {
            0 => smallest,
            1 => rng.random_range(smallest..smallest + 16),
            _ => rng.random_range(smallest..=1500.max(smallest)),
        })
        .collect();
    HeadCase { input, chunks }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Head { head: Head, at: usize },
    TooLarge,
    Malformed,
    Eof,
    Io,
}

/// Reads a head from `input` in `chunks`; with the head, how many bytes were read in all.
fn read(input: &[u8], chunks: &[usize]) -> Outcome {
    let mut stream = Chunked { data: input, pos: 0, chunks, next: 0 };
    match now(read_head(&mut stream)) {
        Ok(head) => Outcome::Head { head, at: stream.pos },
        Err(HeadError::TooLarge) => Outcome::TooLarge,
        Err(HeadError::Malformed) => Outcome::Malformed,
        Err(HeadError::Eof) => Outcome::Eof,
        Err(HeadError::Io(_)) => Outcome::Io,
    }
}

/// Checks one case; the label of what the reader gave in one reading (`head`, `too-large`, ...).
fn check_head(case: &HeadCase) -> Result<&'static str, String> {
    let input = &case.input;
    let whole = read(input, &[]);
    let chunked = read(input, &case.chunks);
    for outcome in [&whole, &chunked] {
        let Outcome::Head { head, at } = outcome else { continue };
        // The head and what followed it are exactly the input, in order.
        let end = at - head.rest.len();
        if head.rest[..] != input[end..*at] {
            return Err(format!("rest is not the bytes after the head: {outcome:?}"));
        }
        if end > MAX_HEAD {
            return Err(format!("a head of {end} bytes accepted"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&input[..end]) != Ok(httparse::Status::Complete(end)) {
            return Err(format!("the head is not a complete request of its own: {outcome:?}"));
        }
        if req.method != Some(head.method.as_str()) || req.path != Some(head.path.as_str()) {
            return Err(format!("method or path differ from the parser's: {outcome:?}"));
        }
        // What the WebSocket layer then reads: the rest, then the stream.
        let _ = head.websocket_key();
        let mut after = Vec::new();
        now(Prefixed::new(head.rest.clone(), &input[*at..]).read_to_end(&mut after)).unwrap();
        if after != input[end..] {
            return Err("the bytes after the head come out changed".into());
        }
    }
    let kind = |o: &Outcome| std::mem::discriminant(o);
    let label = match whole {
        Outcome::Head { .. } => "head",
        Outcome::TooLarge => "too-large",
        Outcome::Malformed => "malformed",
        Outcome::Eof => "eof",
        Outcome::Io => "io",
    };
    let checked = match (&whole, &chunked) {
        (Outcome::Head { head: a, .. }, Outcome::Head { head: b, .. })
            if (&a.method, &a.path, &a.headers) != (&b.method, &b.path, &b.headers) =>
        {
            Err("two segmentations gave two heads".into())
        }
        // The verdict is the bytes', never where the reads fell.
        (a, b) if kind(a) != kind(b) => Err(format!("{a:?} in one read, {b:?} in chunks")),
        _ => Ok(()),
    };
    checked.map(|()| label)
}

#[test]
#[ignore = "long-running fuzz: `just fuzz CASES`"]
fn fuzz_read_head() {
    let plan = Plan::from_env(DEFAULT_CASES);
    plan.run(
        "http::read_head",
        head_case,
        |case, _| check_head(case),
        |case| format!("{} chunks {:?}", show_bytes(&case.input), &case.chunks[..8]),
    );
}

#[test]
fn fuzz_smoke() {
    let plan = Plan { cases: 2_000, from: 0, seed: 1 };
    plan.run("http::read_head", head_case, |case, _| check_head(case), |case| show_bytes(&case.input));
}
