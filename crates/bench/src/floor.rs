//! The bus's floor: what a request through NATS and its answer cost the two NATS clients alone,
//! with nothing of clientmq around them. A *requester* (the gateway's part) publishes requests on
//! the load's schedule (connections with evenly spread slots, as [`crate::request`] paces them),
//! with the gateway's subject, reply subject and headers, and reads the answers on one
//! subscription; a *responder* (the worker's part) answers each with its payload and no headers,
//! as `clientmq-chat` answers `mq.PingPong`. Each runs in a process of its own (async-nats on a
//! multi-threaded tokio runtime, as the gateway and the worker run it), so its CPU time is read
//! apart. Other runs send the requests without headers, write them by hand on a socket with no
//! client library (one `write` each: the kernel's share), or publish nothing (the schedule
//! alone, which the other runs' requester CPU is given less of).
//!
//! The gateway cannot spend less per request on the bus than the requester, nor the worker less
//! than the responder, whatever clientmq does, while each request is one NATS message each way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::helper::Helper;
use crate::procfs;

const REQUEST: &str = "floor.req.mq.PingPong";
const GATEWAY: &str = "gw1.k3x9a1pq";
const INBOX: &str = "floor.gw.gw1.k3x9a1pq";
/// An `mq.PingPong` payload of the load's size.
const PAYLOAD: &[u8] = b"\x0a\x0d1733612345678";

/// What the requester publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Publish {
    /// The gateway's request headers (gateway, connection, remote address, timeout).
    Headers,
    /// The same requests without headers.
    Bare,
    /// The same requests without headers, written by hand on a socket of its own (no client
    /// library: one `write` per request, answers parsed in place): the kernel's share.
    Raw,
    /// Nothing: the schedule alone, to subtract.
    Nothing,
}

/// What a run offers: how requests are sent, how many a second over how many connections, for
/// how long, and how many each bus message carries.
#[derive(Debug, Clone, Copy)]
pub struct FloorLoad {
    pub publish: Publish,
    pub rate: f64,
    pub connections: usize,
    pub load: Duration,
    /// Requests per bus message (1: the contract's). More stand for a contract that batches:
    /// each request then carries its own metadata in the payload (64 bytes, for the headers).
    pub batch: usize,
}

/// One measured run: CPU µs per request of each process.
#[derive(Debug, Clone, Copy)]
pub struct FloorRun {
    pub answered: u64,
    pub requester_us: f64,
    pub responder_us: f64,
}

/// How long a helper may take to say it is ready, or done.
const SILENT_FOR: Duration = Duration::from_secs(60);

/// Starts a responder and a requester (`exe`'s hidden modes) on `nats_url`, offers `load`, and
/// reads both processes' CPU time around it.
pub async fn run(exe: &std::path::Path, nats_url: &str, load: &FloorLoad) -> Result<FloorRun, String> {
    let responder = ready(exe, &["bus-floor-responder".into(), "--nats".into(), nats_url.into()]).await?;
    let args = [
        "bus-floor-requester".into(),
        "--nats".into(),
        nats_url.into(),
        "--rate".into(),
        load.rate.to_string(),
        "--connections".into(),
        load.connections.to_string(),
        "--secs".into(),
        load.load.as_secs_f64().to_string(),
        "--publish".into(),
        format!("{:?}", load.publish).to_lowercase(),
        "--batch".into(),
        load.batch.to_string(),
    ];
    let mut requester = ready(exe, &args).await?;
    let cpu = |h: &Helper| procfs::cpu_secs(h.pid()).map(|(u, s)| u + s).unwrap_or(0.0);
    let before = (cpu(&requester), cpu(&responder));
    requester.say("go").await?;
    let done = within(requester.line("done ")).await?;
    let after = (cpu(&requester), cpu(&responder));
    let answered: u64 = done["done ".len()..].parse().map_err(|_| format!("requester said {done:?}"))?;
    requester.stop(Duration::from_secs(5)).await;
    responder.stop(Duration::from_secs(5)).await;
    let per = |d: f64| d * 1e6 / answered.max(1) as f64;
    Ok(FloorRun { answered, requester_us: per(after.0 - before.0), responder_us: per(after.1 - before.1) })
}

/// A helper started, once it has said `ready`.
async fn ready(exe: &std::path::Path, args: &[String]) -> Result<Helper, String> {
    let mut helper = Helper::start(exe, args)?;
    within(helper.line("ready")).await?;
    Ok(helper)
}

async fn within(line: impl Future<Output = Result<String, String>>) -> Result<String, String> {
    tokio::time::timeout(SILENT_FOR, line)
        .await
        .map_err(|_| format!("a helper was silent for {SILENT_FOR:?}"))?
}

async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::connect(url).await.map_err(|e| format!("{url}: {e}"))
}

/// Reads stdin until it closes.
async fn until_stdin_closes() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// The responder: answers every request with its payload, until stdin closes.
pub async fn responder(url: &str) -> Result<(), String> {
    let client = connect(url).await?;
    let mut sub = client.queue_subscribe(REQUEST, "floor".into()).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let answering = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, msg.payload).await;
            }
        }
    });
    println!("ready");
    until_stdin_closes().await;
    answering.abort();
    Ok(())
}

/// The requester: waits for `go` on stdin, loads for `load`, prints `done N` (answers, or slots
/// when publishing nothing), then waits for stdin to close.
pub async fn requester(url: &str, offered: &FloorLoad) -> Result<(), String> {
    let FloorLoad { publish, rate, connections, load, batch } = *offered;
    let batch = batch.max(1);
    let client = connect(url).await?;
    let answered = Arc::new(AtomicU64::new(0));
    let (answers, raw) = if publish == Publish::Raw {
        let (reader, writer) = raw_connect(url).await?;
        (tokio::spawn(raw_answers(reader, answered.clone(), batch as u64)), Some(writer))
    } else {
        let mut inbox = client.subscribe(format!("{INBOX}.>")).await.map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let counting = answered.clone();
        let answers = tokio::spawn(async move {
            while inbox.next().await.is_some() {
                counting.fetch_add(batch as u64, Ordering::Relaxed);
            }
        });
        (answers, None)
    };
    println!("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    if stdin.next_line().await.ok().flatten().as_deref() != Some("go") {
        return Err("no go".into());
    }
    let start = Instant::now();
    let end = start + load;
    let interval = Duration::from_secs_f64((connections * batch) as f64 / rate.max(1.0));
    let payload = bytes::Bytes::from(
        (0..batch)
            .flat_map(|_| if batch > 1 { [PAYLOAD, &[0; 64]].concat() } else { PAYLOAD.to_vec() })
            .collect::<Vec<u8>>(),
    );
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (client, counter, raw) = (client.clone(), counter.clone(), raw.clone());
            let offset = interval.mul_f64(c as f64 / connections as f64);
            let schedule = Schedule { first: start + offset, interval, end };
            let message = Message { publish, payload: payload.clone(), batch: batch as u64 };
            tokio::spawn(connection(client, raw, message, c, schedule, counter))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // Answers still on their way are waited for, a while.
    let sent = counter.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(2);
    while publish != Publish::Nothing && answered.load(Ordering::Relaxed) < sent && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answers.abort();
    let n = match publish {
        Publish::Nothing => counter.load(Ordering::Relaxed),
        _ => answered.load(Ordering::Relaxed),
    };
    println!("done {n}");
    while let Ok(Some(_)) = stdin.next_line().await {}
    Ok(())
}

/// What a connection sends at each slot: how, what, and how many requests that is.
#[derive(Clone)]
struct Message {
    publish: Publish,
    payload: bytes::Bytes,
    batch: u64,
}

/// One connection's slots: from `first`, every `interval`, until `end`.
#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Duration,
    end: Instant,
}

async fn connection(
    client: async_nats::Client,
    raw: Option<Arc<std::net::TcpStream>>,
    Message { publish, payload, batch }: Message,
    c: usize,
    Schedule { first, interval, end }: Schedule,
    counter: Arc<AtomicU64>,
) {
    let connection_id = format!("{c:032}");
    let subject = Subject::from_static(REQUEST);
    let mut slot = first;
    let mut n = 0u64;
    while slot < end {
        tokio::time::sleep_until(slot).await;
        counter.fetch_add(batch, Ordering::Relaxed);
        // Built per request, as the gateway builds them.
        let reply: Subject = format!("{INBOX}.reply.{c}{n}").into();
        let payload = payload.clone();
        let sent = match publish {
            Publish::Nothing => Ok(()),
            Publish::Raw => {
                let Some(socket) = &raw else { return };
                let mut line =
                    format!("PUB {REQUEST} {INBOX}.reply.{c}{n} {}\r\n", payload.len()).into_bytes();
                line.extend_from_slice(&payload);
                line.extend_from_slice(b"\r\n");
                // A short write on a socket with room to spare: all of it or an error.
                match std::io::Write::write(&mut &**socket, &line) {
                    Ok(k) if k == line.len() => Ok(()),
                    _ => return,
                }
            }
            Publish::Bare => client.publish_with_reply(subject.clone(), reply, payload).await,
            Publish::Headers => {
                let mut h = HeaderMap::new();
                h.insert("Clientmq-Gateway", GATEWAY);
                h.insert("Clientmq-Connection", connection_id.as_str());
                h.insert("Clientmq-Remote", "127.0.0.1");
                h.insert("Clientmq-Timeout-Ms", "15000");
                client.publish_with_reply_and_headers(subject.clone(), reply, h, payload).await
            }
        };
        if sent.is_err() {
            return;
        }
        n += 1;
        slot += interval;
    }
}

/// A NATS connection by hand: CONNECT, a subscription to the inbox, and a PING whose PONG says
/// both are in place. The reader is tokio's; the writer the same socket, written from any task.
async fn raw_connect(url: &str) -> Result<(tokio::net::TcpStream, Arc<std::net::TcpStream>), String> {
    use tokio::io::AsyncReadExt;
    let addr = url.strip_prefix("nats://").unwrap_or(url);
    let socket = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let hello = format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {INBOX}.> 1\r\nPING\r\n");
    std::io::Write::write_all(&mut &socket, hello.as_bytes()).map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let writer = Arc::new(socket.try_clone().map_err(|e| e.to_string())?);
    let mut reader = tokio::net::TcpStream::from_std(socket).map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == b"PONG\r\n") {
        let n = reader.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("nats-server closed the connection".into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok((reader, writer))
}

/// Counts the answers arriving on a raw connection (`batch` to a `MSG`).
async fn raw_answers(mut reader: tokio::net::TcpStream, answered: Arc<AtomicU64>, batch: u64) {
    use tokio::io::AsyncReadExt;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        answered.fetch_add(take_msgs(&mut pending) * batch, Ordering::Relaxed);
    }
}

/// Takes the whole protocol lines at the front of `pending` (a `MSG` line with its payload, which
/// may hold any byte, and CRLF), leaving an incomplete one; how many were `MSG`s.
fn take_msgs(pending: &mut Vec<u8>) -> u64 {
    let (mut at, mut msgs) = (0, 0);
    while let Some(eol) = pending[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &pending[at..at + eol];
        let size = if line.starts_with(b"MSG ") {
            std::str::from_utf8(line).ok().and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        } else {
            None
        };
        let next = at + eol + 2 + size.map_or(0, |s| s + 2);
        if next > pending.len() {
            break;
        }
        msgs += u64::from(size.is_some());
        at = next;
    }
    pending.drain(..at);
    msgs
}

/// The floor at one rate, medians over the repeats: CPU µs per request.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub rate: f64,
    /// The requester with the gateway's headers, less the schedule alone.
    pub requester: f64,
    /// The same without a client library (bare requests written by hand), less the schedule.
    pub raw: f64,
    /// The responder, to requests with the gateway's headers and to bare ones.
    pub responder_headers: f64,
    pub responder_bare: f64,
}

/// Measures the floor at `rate` over 100 connections, `repeats` times each way.
pub async fn measure(
    exe: &std::path::Path,
    url: &str,
    rate: f64,
    repeats: usize,
    load: Duration,
) -> Result<Floor, String> {
    let mut by = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..repeats.max(1) {
        let each = [Publish::Nothing, Publish::Headers, Publish::Bare, Publish::Raw];
        for (i, publish) in each.into_iter().enumerate() {
            let offered = FloorLoad { publish, rate, connections: 100, load, batch: 1 };
            let r = run(exe, url, &offered).await?;
            crate::plan::log(format!("bus floor {publish:?} at {rate:.0}/s: {r:?}"));
            by[i].push(r);
        }
    }
    let med = |i: usize, f: fn(&FloorRun) -> f64| {
        crate::stats::median(&by[i].iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    Ok(Floor {
        rate,
        requester: med(1, |r| r.requester_us) - med(0, |r| r.requester_us),
        raw: med(3, |r| r.requester_us) - med(0, |r| r.requester_us),
        responder_headers: med(1, |r| r.responder_us),
        responder_bare: med(2, |r| r.responder_us),
    })
}

/// The worker's target: half the CPU per `mq.PingPong` it was filed with (6.5 µs).
pub const WORKER_TARGET_US: f64 = 3.25;

/// What the floor says of the two bus targets at `floor.rate` (`what` names that rate), given the
/// embedded and bus gateways' CPU per request there. 1.3 x allows the bus 0.3 x the embedded
/// gateway's CPU; at full speed that is an upper bound, since the embedded gateway spends no
/// less per request at the bus's lower rate.
pub fn note(what: &str, floor: &Floor, embedded_us: f64, bus_us: f64) -> String {
    let allowed = 0.3 * embedded_us;
    let gateway = if floor.requester > allowed { "below the floor" } else { "above the floor" };
    let worker =
        if floor.responder_headers > WORKER_TARGET_US { "below the floor" } else { "above the floor" };
    format!(
        "bus floor at {:.0} req/s ({what}): async-nats alone, publishing with the gateway's headers and reading \
         the answers, spends {:.1} µs per request ({:.1} writing bare requests by hand, with no client \
         library: the kernel's share); the bus gateway spends {:.1} µs more than embedded ({bus_us:.1} \
         against {embedded_us:.1}); 1.3 x allows the bus {allowed:.1}: {gateway}. A responder that only answers \
         spends {:.1} µs (requests with the gateway's headers; {:.1} without); the worker's target is \
         {WORKER_TARGET_US}: {worker}",
        floor.rate,
        floor.requester,
        floor.raw,
        bus_us - embedded_us,
        floor.responder_headers,
        floor.responder_bare,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_whole_however_the_bytes_arrive() {
        // Payloads holding CRLF, a PING between, the stream cut at every byte.
        let stream = b"MSG a.b 1 4\r\n\r\n\r\n\r\nPING\r\nMSG a.c 1 r.x 2\r\nok\r\nMSG a.d 1 0\r\n\r\n";
        for cut in 0..stream.len() {
            let mut pending = stream[..cut].to_vec();
            let first = take_msgs(&mut pending);
            pending.extend_from_slice(&stream[cut..]);
            let rest = take_msgs(&mut pending);
            assert_eq!((first + rest, pending.len()), (3, 0), "cut at {cut}");
        }
    }

    #[test]
    fn a_target_under_what_the_client_alone_costs_is_below_the_floor() {
        let floor =
            Floor { rate: 20_000.0, requester: 8.0, raw: 7.5, responder_headers: 4.0, responder_bare: 3.0 };
        let n = note("paced", &floor, 12.0, 21.0);
        assert!(n.contains("spends 8.0 µs per request (7.5 writing bare requests by hand"), "{n}");
        assert!(n.contains("9.0 µs more than embedded (21.0 against 12.0)"), "{n}");
        assert!(n.contains("allows the bus 3.6: below the floor"), "{n}");
        assert!(n.contains("target is 3.25: below the floor"), "{n}");
        let cheap = Floor { requester: 3.0, responder_headers: 3.0, ..floor };
        let n = note("paced", &cheap, 12.0, 14.0);
        assert!(n.contains("allows the bus 3.6: above the floor"), "{n}");
        assert!(n.contains("target is 3.25: above the floor"), "{n}");
    }
}
