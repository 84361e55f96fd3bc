//! [`Bus`] on a real NATS server, with the official client (async-nats). It reconnects with
//! back-off forever and restores subscriptions itself; while it is disconnected, publishing
//! fails at once instead of queueing (a gateway answers its clients `unavailable` rather than
//! sending requests that would arrive long after the client gave up).

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, HeaderMap, HeaderValue};
use futures_util::StreamExt;

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

fn to_headers(headers: &[(String, String)]) -> Result<Option<HeaderMap>, BusError> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let value: HeaderValue = value.parse().map_err(|_| BusError::Refused(format!("header {name}")))?;
        map.append(name.as_str(), value);
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
        let headers = to_headers(&msg.headers)?;
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
        sub.map(NatsSubscription).map_err(|e| BusError::Refused(e.to_string()))
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

pub struct NatsSubscription(async_nats::Subscriber);

impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<BusMessage> {
        self.0.next().await.map(from_nats)
    }

    /// An unsubscribe, then a ping: once the server's pong is back, nothing more can come.
    async fn drain(&mut self) {
        if let Err(e) = self.0.drain().await {
            tracing::debug!(error = %e, "not drained: the client is gone");
        }
    }
}
