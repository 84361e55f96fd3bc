//! Trace events: what the gateway did, one line each. The simulator snapshots these lines, so
//! their text form is stable and holds nothing nondeterministic (no wall clock, no map order).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::ConnectionId;

/// How a connection ended. Every disconnect has exactly one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DisconnectPath {
    /// The client sent a close frame first.
    Client,
    /// The server closed and the client answered with its close frame.
    Server,
    /// The server closed, the client never answered, and the close timeout aborted the transport.
    Forced,
    /// The transport failed: reset, EOF without close frame, or an I/O error.
    Lost,
}

impl DisconnectPath {
    pub const ALL: [DisconnectPath; 4] =
        [DisconnectPath::Client, DisconnectPath::Server, DisconnectPath::Forced, DisconnectPath::Lost];

    pub fn label(self) -> &'static str {
        match self {
            DisconnectPath::Client => "client",
            DisconnectPath::Server => "server",
            DisconnectPath::Forced => "forced",
            DisconnectPath::Lost => "lost",
        }
    }
}

/// Why the transport was lost, as the I/O layer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LostReason {
    /// The stream ended without a close frame.
    Eof,
    /// Connection reset or another I/O error.
    Error,
    /// A protocol violation at the WebSocket layer (reported with 1002).
    Protocol,
    /// A message over the size limit; the transport closed it with 1009.
    TooBig,
    /// A text message that is not UTF-8; the transport closed it with 1007.
    NotUtf8,
}

impl LostReason {
    /// The close code a disconnect for this reason is counted under.
    pub fn code(self) -> u16 {
        match self {
            LostReason::Eof | LostReason::Error => crate::close::ABNORMAL,
            LostReason::Protocol => 1002,
            LostReason::TooBig => crate::close::TOO_BIG.code,
            LostReason::NotUtf8 => 1007,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LostReason::Eof => "eof",
            LostReason::Error => "error",
            LostReason::Protocol => "protocol",
            LostReason::TooBig => "too-big",
            LostReason::NotUtf8 => "not-utf8",
        }
    }
}

/// Why an incoming frame or reply changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not an MQ message; the label of the [`crate::CodecError`].
    Malformed(&'static str),
    /// A request without a request id cannot be answered.
    MissingRequestId,
    /// The connection is closing.
    NotOpen,
    /// No such connection (never existed, or already ended).
    UnknownConnection,
    /// Clients may not send events.
    ClientEvent,
    /// A client response that matches no pending server request.
    UnsolicitedResponse,
    /// A client response to a server request that already timed out or failed.
    LateResponse,
    /// A message type outside `Request`, `Response` and `Event`.
    UnknownMessageType,
    /// Over the connection's frame rate (requests over it are answered instead).
    RateLimited,
    /// An event larger than the outbound limit (answers over it become `mq.Error{too-large}`).
    OutboundTooLarge,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed(label) => label,
            DropReason::MissingRequestId => "missing-request-id",
            DropReason::NotOpen => "not-open",
            DropReason::UnknownConnection => "unknown-connection",
            DropReason::ClientEvent => "client-event",
            DropReason::UnsolicitedResponse => "unsolicited-response",
            DropReason::LateResponse => "late-response",
            DropReason::UnknownMessageType => "unknown-message-type",
            DropReason::RateLimited => "rate-limited",
            DropReason::OutboundTooLarge => "outbound-too-large",
        }
    }
}

/// How a client request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestOutcome {
    /// The backend answered and the answer went out.
    Ok,
    /// The backend answered with an `mq.Error` of its own (unauthorized, malformed, ...), which
    /// went out ([`EventKind::BackendRefused`] says why).
    Error,
    /// The backend failed: `mq.Error{failed}`.
    Failed,
    /// No answer within the request timeout: `mq.Error{timeout}`.
    Timeout,
    /// Refused by the gateway before the backend saw it (limit, draining, malformed payload).
    Refused,
    /// The answer came after the connection stopped being open; nothing was sent.
    Undeliverable,
}

impl RequestOutcome {
    pub const ALL: [RequestOutcome; 6] = [
        RequestOutcome::Ok,
        RequestOutcome::Error,
        RequestOutcome::Failed,
        RequestOutcome::Timeout,
        RequestOutcome::Refused,
        RequestOutcome::Undeliverable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Error => "error",
            RequestOutcome::Failed => "failed",
            RequestOutcome::Timeout => "timeout",
            RequestOutcome::Refused => "refused",
            RequestOutcome::Undeliverable => "undeliverable",
        }
    }
}

/// Something about a connection that arrived after it ended, or for an id never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stray {
    Close,
    Pong,
    TransportLost,
    SendFailed,
    ServerRequest,
    Delivery,
    Subscription,
    /// The backend asked to close a connection that is gone.
    CloseRequest,
}

impl Stray {
    pub fn label(self) -> &'static str {
        match self {
            Stray::Close => "close",
            Stray::Pong => "pong",
            Stray::TransportLost => "transport-lost",
            Stray::SendFailed => "send-failed",
            Stray::ServerRequest => "server-request",
            Stray::Delivery => "delivery",
            Stray::Subscription => "subscription",
            Stray::CloseRequest => "close-request",
        }
    }
}

/// Room or conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    Room,
    Conversation,
}

impl Topic {
    pub fn label(self) -> &'static str {
        match self {
            Topic::Room => "room",
            Topic::Conversation => "conversation",
        }
    }
}

/// One trace event: when (since the gateway started), which connection, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub conn: Option<ConnectionId>,
    pub kind: EventKind,
}

/// What happened. Each variant renders as a short fixed word followed by `key=value` pairs.
/// `TokenRefused`: an authentication or a join the token policy refused (the token is never
/// shown); `RequestRefused`: a request the gateway answered itself with `mq.Error{reason}`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Opened {
        remote: IpAddr,
        open: usize,
    },
    Rejected {
        code: u16,
        open: usize,
    },
    Dropped {
        reason: DropReason,
    },
    Forwarded {
        request_id: String,
        request_type: String,
        token: u64,
    },
    Answered {
        request_id: String,
        request_type: String,
        outcome: RequestOutcome,
        elapsed: Duration,
    },
    LateReply {
        token: u64,
    },
    Authenticated {
        session_id: String,
    },
    Subscribed {
        topic: Topic,
        room: String,
    },
    Unsubscribed {
        topic: Topic,
        room: String,
    },
    SubscriptionLimit {
        room: String,
    },
    /// A subscription change older (by its revision) than one already applied: dropped.
    SubscriptionStale {
        topic: Topic,
        room: String,
        revision: u64,
        /// The binding the change was read off, if it said (see [`Revision`](crate::Revision)).
        binding: Option<u64>,
    },
    Delivered {
        /// Shared by every delivery of one event (a room's subscribers): one allocation, not one
        /// a subscriber.
        event_type: std::sync::Arc<str>,
    },
    ServerRequestSent {
        request_id: String,
        request_type: String,
    },
    ServerRequestDone {
        request_id: String,
        outcome: &'static str,
    },
    PingSent,
    Pong {
        rtt: Duration,
    },
    UnexpectedPong,
    CloseSent {
        code: u16,
        reason: &'static str,
    },
    PeerClosed {
        code: Option<u16>,
    },
    CloseTimeout,
    SendFailed,
    Disconnected {
        path: DisconnectPath,
        code: u16,
        open: usize,
    },
    Stray {
        what: Stray,
        after_end: bool,
    },
    DrainStarted {
        open: usize,
    },
    DrainDeferred {
        pending: usize,
    },
    /// A flood past a burst of refusals: the 1008 close waits for these requests' answers.
    FloodDeferred {
        pending: usize,
    },
    TokenRefused {
        reason: &'static str,
    },
    RequestRefused {
        reason: &'static str,
    },
    /// The backend answered a request with `mq.Error{reason}` (the reasons clientmq's backends
    /// use; any other is `other`, so a worker cannot grow the metric's labels without bound).
    BackendRefused {
        reason: &'static str,
    },
}

/// Renders a client-supplied string safely on one line: control characters, spaces and
/// non-ASCII are escaped, and anything past 64 characters is cut with a `...` mark.
pub struct Clean<'a>(pub &'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 64;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX {
                return f.write_str("...");
            }
            if c.is_ascii_graphic() && c != '\\' {
                write!(f, "{c}")?;
            } else if matches!(c, '\n' | '\r' | '\t' | '\\') {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{}", c.escape_unicode())?;
            }
        }
        if self.0.is_empty() {
            f.write_str("\"\"")?;
        }
        Ok(())
    }
}

/// Renders a duration as seconds with microseconds: `12.000250s`.
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0.as_secs(), self.0.subsec_micros())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>14} ", Secs(self.at).to_string())?;
        match &self.conn {
            Some(id) => write!(f, "{id} ")?,
            None => write!(f, "{:-<32} ", "")?,
        }
        write!(f, "{}", self.kind)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EventKind::*;
        match self {
            Opened { remote, open } => write!(f, "opened remote={remote} open={open}"),
            Rejected { code, open } => write!(f, "rejected code={code} open={open}"),
            Dropped { reason } => write!(f, "dropped reason={}", reason.label()),
            Forwarded { request_id, request_type, token } => {
                write!(f, "forwarded id={} type={} token={token}", Clean(request_id), Clean(request_type))
            }
            Answered { request_id, request_type, outcome, elapsed } => write!(
                f,
                "answered id={} type={} outcome={} after={}",
                Clean(request_id),
                Clean(request_type),
                outcome.label(),
                Secs(*elapsed)
            ),
            LateReply { token } => write!(f, "late-reply token={token}"),
            Authenticated { session_id } => {
                write!(f, "authenticated session={}", Clean(session_id))
            }
            Subscribed { topic, room } => write!(f, "subscribed {}={}", topic.label(), Clean(room)),
            Unsubscribed { topic, room } => {
                write!(f, "unsubscribed {}={}", topic.label(), Clean(room))
            }
            SubscriptionLimit { room } => write!(f, "subscription-limit room={}", Clean(room)),
            SubscriptionStale { topic, room, revision, binding } => {
                write!(f, "subscription-stale {}={} revision={revision}", topic.label(), Clean(room))?;
                match binding {
                    Some(binding) => write!(f, " binding={binding}"),
                    None => Ok(()),
                }
            }
            Delivered { event_type } => write!(f, "delivered type={}", Clean(event_type)),
            ServerRequestSent { request_id, request_type } => {
                write!(f, "server-request id={} type={}", Clean(request_id), Clean(request_type))
            }
            ServerRequestDone { request_id, outcome } => {
                write!(f, "server-request-done id={} outcome={outcome}", Clean(request_id))
            }
            PingSent => write!(f, "ping"),
            Pong { rtt } => write!(f, "pong rtt={}", Secs(*rtt)),
            UnexpectedPong => write!(f, "unexpected-pong"),
            CloseSent { code, reason } => write!(f, "close-sent code={code} reason={reason}"),
            PeerClosed { code: Some(code) } => write!(f, "peer-closed code={code}"),
            PeerClosed { code: None } => write!(f, "peer-closed code=none"),
            CloseTimeout => write!(f, "close-timeout"),
            SendFailed => write!(f, "send-failed"),
            Disconnected { path, code, open } => {
                write!(f, "disconnected path={} code={code} open={open}", path.label())
            }
            Stray { what, after_end: true } => write!(f, "stray {} after-end", what.label()),
            Stray { what, after_end: false } => write!(f, "stray {} unknown", what.label()),
            DrainStarted { open } => write!(f, "drain-started open={open}"),
            DrainDeferred { pending } => write!(f, "drain-deferred pending={pending}"),
            FloodDeferred { pending } => write!(f, "flood-deferred pending={pending}"),
            TokenRefused { reason } => write!(f, "token-refused reason={reason}"),
            RequestRefused { reason } => write!(f, "request-refused reason={reason}"),
            BackendRefused { reason } => write!(f, "backend-refused reason={reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_cannot_break_the_line() {
        let kind = EventKind::Delivered { event_type: format!("a b\nc\\{}", "x".repeat(100)).into() };
        let line = kind.to_string();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("delivered type=a\\u{20}b\\nc\\\\x"), "{line}");
        assert!(line.ends_with("..."));
        assert_eq!(EventKind::Delivered { event_type: "".into() }.to_string(), "delivered type=\"\"");
    }

    #[test]
    fn events_render_on_one_stable_line() {
        let id: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
        let e = Event {
            at: Duration::from_micros(20_000_250),
            conn: Some(id),
            kind: EventKind::Disconnected { path: DisconnectPath::Forced, code: 3334, open: 7 },
        };
        assert_eq!(
            e.to_string(),
            "    20.000250s 0123456789abcdefghijABCDEFGHIJ01 disconnected path=forced code=3334 open=7"
        );
        let global = Event { at: Duration::ZERO, conn: None, kind: EventKind::DrainStarted { open: 0 } };
        assert_eq!(global.to_string(), format!("     0.000000s {} drain-started open=0", "-".repeat(32)));
    }
}
