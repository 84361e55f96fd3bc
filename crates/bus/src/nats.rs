//! [`Bus`] on a real NATS server, with the official client (async-nats). It reconnects with
//! back-off forever and restores subscriptions itself; while it is disconnected, publishing
//! fails at once instead of queueing (a gateway answers its clients `unavailable` rather than
//! sending requests that would arrive long after the client gave up).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, HeaderMap, HeaderName, HeaderValue};
use futures_util::{FutureExt as _, StreamExt};

use super::{Bus, BusError, BusMessage, BusStatus, StatusCell, Subscription};
use crate::access::Access;

/// The client pings the server this often and counts it gone after two missed pongs, so a
/// silent network cut is noticed within about three periods.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Reconnect back-off: 50 ms doubling to at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct NatsBus {
    client: async_nats::Client,
    status: Arc<StatusCell>,
}

impl NatsBus {
    /// Connects to an open NATS server at `url` (`nats://host:port`) as `name`: [`NatsBus::open`]
    /// with no credentials and no TLS (tests and a local fleet).
    pub async fn connect(url: &str, name: &str) -> Result<NatsBus, BusError> {
        let args = crate::access::NatsArgs { nats: Some(url.to_owned()), ..Default::default() };
        let access =
            args.access().map_err(|e| BusError::Refused(e.to_string()))?.ok_or(BusError::Disconnected)?;
        NatsBus::open(&access, name).await
    }

    /// [`NatsBus::open`] for a binary: logs where and how it connects (never a secret), or why
    /// it cannot.
    pub async fn open_logged(access: &Access, name: &str) -> Option<NatsBus> {
        let servers = access.servers().join(",");
        match NatsBus::open(access, name).await {
            Ok(bus) => {
                let (auth, tls) = (access.method(), access.tls.is_some());
                tracing::info!(nats = %servers, auth, tls, name, "connecting to the bus");
                Some(bus)
            }
            Err(e) => {
                tracing::error!(nats = %servers, error = %e, "cannot use the bus");
                None
            }
        }
    }

    /// Connects to the servers of `access`, with its credentials and TLS, as `name`. Returns at
    /// once: the first connection and every later one happen in the background, visible through
    /// [`Bus::status`]; each uses the credentials last loaded into `access`.
    pub async fn open(access: &Access, name: &str) -> Result<NatsBus, BusError> {
        let status = Arc::new(StatusCell::default());
        let events = status.clone();
        let credentials = access.clone();
        let mut options = ConnectOptions::with_auth_callback(move |nonce| {
            let credentials = credentials.clone();
            async move { credentials.auth(&nonce) }
        })
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(PING_EVERY)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            let doubling = Duration::from_millis(50).saturating_mul(1 << attempt.min(8));
            doubling.min(MAX_BACKOFF)
        })
        .event_callback(move |event| {
            let status = events.clone();
            async move {
                match event {
                    Event::Connected => status.set_connected(true),
                    Event::Disconnected => status.set_connected(false),
                    Event::ClientError(e) => {
                        let refused = e.to_string().contains("authorization");
                        status.count_failure(refused);
                        if refused {
                            tracing::error!(error = %e, "NATS refused this process's credentials; retrying");
                        } else {
                            tracing::warn!(error = %e, "cannot connect to NATS; retrying");
                        }
                    }
                    other => tracing::info!(event = %other, "bus event"),
                }
            }
        });
        if let Some(tls) = &access.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.cert_and_key {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let servers = access
            .servers()
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Refused(e.to_string()))?;
        let client = options.connect(servers).await.map_err(|e| BusError::Refused(e.to_string()))?;
        if client.connection_state() == async_nats::connection::State::Connected && !status.get().connected {
            // Connected before the callback was registered to see it.
            status.set_connected(true);
        }
        Ok(NatsBus { client, status })
    }
}

/// The headers in async-nats's map, each checked by async-nats's own fallible parsing: its
/// conversions of a string panic on a bad name or value. Names are moved in, values copied.
fn to_headers(headers: Vec<(String, String)>) -> Result<Option<HeaderMap>, BusError> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let value: HeaderValue = value.parse().map_err(|_| BusError::Refused(format!("header {name}")))?;
        let name = HeaderName::try_from(name).map_err(|e| BusError::Refused(format!("header name: {e}")))?;
        map.append(name, value);
    }
    Ok(Some(map))
}

fn from_nats(msg: async_nats::Message) -> BusMessage {
    // `as_str` rather than `to_string`: a subject's and a header name's `Display` go through the
    // formatting machinery, a fifth of a worker's time per message once.
    let headers = msg
        .headers
        .iter()
        .flat_map(|map| map.iter())
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name.to_owned(), v.as_str().to_owned()))
        })
        .collect();
    BusMessage {
        subject: msg.subject.as_str().to_owned(),
        reply: msg.reply.map(|r| r.as_str().to_owned()),
        headers,
        payload: msg.payload.to_vec(),
        status: msg.status.map(|s| s.as_u16()),
    }
}

impl Bus for NatsBus {
    type Subscription = NatsSubscription;

    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        if !self.status.get().connected {
            return Err(BusError::Disconnected);
        }
        let headers = to_headers(msg.headers)?;
        let payload = bytes::Bytes::from(msg.payload);
        let sent = match (msg.reply, headers) {
            (None, None) => self.client.publish(msg.subject, payload).await,
            (None, Some(h)) => self.client.publish_with_headers(msg.subject, h, payload).await,
            (Some(r), None) => self.client.publish_with_reply(msg.subject, r, payload).await,
            (Some(r), Some(h)) => {
                self.client.publish_with_reply_and_headers(msg.subject, r, h, payload).await
            }
        };
        sent.map_err(|e| BusError::Refused(e.to_string()))
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<NatsSubscription, BusError> {
        let subject = subject.to_owned();
        let sub = match queue_group {
            Some(group) => self.client.queue_subscribe(subject, group.to_owned()).await,
            None => self.client.subscribe(subject).await,
        };
        sub.map(NatsSubscription::new).map_err(|e| BusError::Refused(e.to_string()))
    }

    async fn flush(&self) -> Result<(), BusError> {
        if !self.status.get().connected {
            return Err(BusError::Disconnected);
        }
        self.client.flush().await.map_err(|e| BusError::Refused(e.to_string()))
    }

    fn status(&self) -> BusStatus {
        self.status.get()
    }

    async fn changed(&self, seen: BusStatus) {
        self.status.changed(seen).await
    }

    fn failures(&self) -> (u64, u64) {
        self.status.failures()
    }
}

/// A subscription, counting what it takes: the count fences its drain (see `drain`).
pub struct NatsSubscription {
    sub: async_nats::Subscriber,
    /// Messages taken from the client so far, those held here included.
    taken: u64,
    /// Taken from the client when the drain counted them, not yet handed out.
    held: VecDeque<async_nats::Message>,
    rate: Rate,
    draining: Draining,
}

/// The recent rate of a subscription: messages taken in the window that began at `window`, and
/// in the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate {
    window: tokio::time::Instant,
    in_window: u64,
    in_last_window: u64,
}

impl Rate {
    fn new(now: tokio::time::Instant) -> Rate {
        Rate { window: now, in_window: 0, in_last_window: 0 }
    }

    /// One message taken at `now`.
    fn took(&mut self, now: tokio::time::Instant) {
        let since = now.duration_since(self.window);
        if since >= RATE_WINDOW {
            // The window just ended is the last one only if no whole window passed since.
            self.in_last_window = if since < RATE_WINDOW * 2 { self.in_window } else { 0 };
            (self.window, self.in_window) = (now, 0);
        }
        self.in_window += 1;
    }

    /// How many more messages a drain lets the server send: `DRAIN_MARGIN`, and a second's
    /// worth at the busier of the two windows.
    fn drain_margin(&self) -> u64 {
        DRAIN_MARGIN + DRAIN_WINDOWS * self.in_window.max(self.in_last_window)
    }
}

/// Where a subscription's drain stands.
enum Draining {
    No,
    /// The server stops after a count: when to stop waiting for its last messages if none comes.
    QuietUntil(tokio::time::Instant),
    /// Unsubscribed outright: what the client holds still comes, then the end.
    Unsubscribed,
}

impl NatsSubscription {
    fn new(sub: async_nats::Subscriber) -> Self {
        let rate = Rate::new(tokio::time::Instant::now());
        NatsSubscription { sub, taken: 0, held: VecDeque::new(), rate, draining: Draining::No }
    }

    fn took(&mut self) {
        self.taken += 1;
        self.rate.took(tokio::time::Instant::now());
    }
}

/// How many more messages a draining subscription lets the server send it: a second's worth at
/// the recent rate (ten windows), and 64; more than can be on their way when the server reads
/// the unsubscribe unless the client stalls for a second. It serves them: the drain takes about
/// a second longer.
const DRAIN_MARGIN: u64 = 64;
const DRAIN_WINDOWS: u64 = 10;
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// A draining subscription that hears nothing this long stops the server at once.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<BusMessage> {
        if let Some(msg) = self.held.pop_front() {
            return Some(from_nats(msg));
        }
        loop {
            let Draining::QuietUntil(quiet_until) = self.draining else {
                let msg = self.sub.next().await?;
                self.took();
                return Some(from_nats(msg));
            };
            match tokio::time::timeout_at(quiet_until, self.sub.next()).await {
                Ok(Some(msg)) => {
                    self.took();
                    self.draining = Draining::QuietUntil(tokio::time::Instant::now() + DRAIN_QUIET);
                    return Some(from_nats(msg));
                }
                Ok(None) => return None,
                Err(_) => {
                    // Quiet: nothing is likely on its way. What is already here still comes.
                    if let Err(e) = self.sub.unsubscribe().await {
                        tracing::debug!(error = %e, "not unsubscribed: the client is gone");
                        return None;
                    }
                    self.draining = Draining::Unsubscribed;
                }
            }
        }
    }

    /// async-nats's own drain forgets the subscription once its unsubscribe is written and a
    /// wake-up has read what had come, and a message the server sent before it read the
    /// unsubscribe is then dropped: a request a gateway waits for in vain (under a stream of
    /// messages, `tests/drain.rs`; not seen at a rolling restart's rates). So
    /// the server is told to stop after a count of messages: those taken here, those already in
    /// the client's queue, and a margin for those on their way (`DRAIN_MARGIN`). The client
    /// forgets the subscription on the same count, so it hears every message the server sent.
    /// Should fewer come than the margin, a quiet subscription is unsubscribed outright
    /// (`DRAIN_QUIET`), when nothing is likely on its way. (A client stalled for longer than a
    /// second's worth of messages, or a message arriving in the round trip of that last
    /// unsubscribe, can still be lost.)
    async fn drain(&mut self) {
        if !matches!(self.draining, Draining::No) {
            return;
        }
        while let Some(Some(msg)) = self.sub.next().now_or_never() {
            self.took();
            self.held.push_back(msg);
        }
        if let Err(e) = self.sub.unsubscribe_after(self.taken + self.rate.drain_margin()).await {
            tracing::debug!(error = %e, "not drained: the client is gone");
        }
        self.draining = Draining::QuietUntil(tokio::time::Instant::now() + DRAIN_QUIET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_busier_of_this_window_and_the_last() {
        let start = tokio::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut rate = Rate::new(start);
        assert_eq!(rate.drain_margin(), DRAIN_MARGIN);
        for ms in 0..30 {
            rate.took(at(ms));
        }
        assert_eq!((rate.in_window, rate.in_last_window), (30, 0));
        assert_eq!(rate.drain_margin(), DRAIN_MARGIN + DRAIN_WINDOWS * 30);
        // A window ends at exactly RATE_WINDOW: the next message opens a new one.
        rate.took(at(100));
        assert_eq!((rate.in_window, rate.in_last_window, rate.window), (1, 30, at(100)));
        assert_eq!(rate.drain_margin(), DRAIN_MARGIN + DRAIN_WINDOWS * 30);
        for ms in 101..141 {
            rate.took(at(ms));
        }
        assert_eq!((rate.in_window, rate.in_last_window), (41, 30));
        assert_eq!(rate.drain_margin(), DRAIN_MARGIN + DRAIN_WINDOWS * 41);
        // Just under two windows later the last window is still the one before.
        rate.took(at(299));
        assert_eq!((rate.in_window, rate.in_last_window, rate.window), (1, 41, at(299)));
        // Two windows or more of silence: nothing recent.
        rate.took(at(499));
        assert_eq!((rate.in_window, rate.in_last_window), (1, 0));
        assert_eq!(rate.drain_margin(), DRAIN_MARGIN + DRAIN_WINDOWS);
    }

    #[test]
    fn headers_go_over_as_given_and_a_bad_one_is_refused() {
        let owned =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert!(to_headers(Vec::new()).unwrap().is_none());
        let map = to_headers(owned(&[("A", "1"), ("A", "2"), ("B", "x y")])).unwrap().expect("headers");
        let a: Vec<&str> = map.get_all("A").map(|v| v.as_str()).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(map.get("B").map(|v| v.as_str()), Some("x y"));
        let bad = to_headers(owned(&[("C", "line\r\nbreak")]));
        assert!(matches!(bad, Err(BusError::Refused(e)) if e == "header C"));
        // A bad name is an error too, not async-nats's panic.
        for name in ["a:b", "caf\u{e9}", "a\nb"] {
            assert!(matches!(to_headers(owned(&[(name, "v")])), Err(BusError::Refused(_))), "{name:?}");
        }
    }
}
