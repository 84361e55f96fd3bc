//! The worker side of gateway liveness (docs/nats.md, "Liveness, loss and recovery"): what any
//! stateful worker must keep about the gateways of the fleet, whatever its application.
//!
//! [`Gateways`] knows which gateway each connection came through, when each gateway was last
//! heard from and under which bus epoch, which gateways are counted gone, and the orphans still
//! to be told to a gateway that comes back. It performs no I/O and reads no clock: the worker
//! feeds it what arrived with `now` and publishes the messages it returns, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clientmq_core::ConnectionId;

use crate::BusMessage;
use crate::contract::{self, GATEWAY_SILENT_AFTER, IDS_PER_MESSAGE, Subjects, ToGateway, header};

/// A list sent to a gateway (orphans) is sent again after this long without an answer.
pub const RESEND_AFTER: Duration = Duration::from_secs(2);

/// What a worker knows of one gateway.
#[derive(Debug)]
struct RemoteGateway {
    last_seen: Instant,
    /// Its bus epoch at the last announcement: a new one means it reconnected to the bus.
    epoch: Option<u64>,
    /// Counted gone: its connections were treated as disconnected.
    gone: bool,
    /// Connections whose sessions were detached while it was counted gone, still to be told.
    orphans: BTreeSet<ConnectionId>,
    /// The orphans last sent, when, and under which number, until the gateway acknowledges
    /// that very message.
    told: Option<(Instant, u64, Vec<ConnectionId>)>,
    sent_lists: u64,
    /// Its last sync reached nobody (no responders): ask again at its next announcement.
    sync_lost: bool,
}

impl RemoteGateway {
    fn new(now: Instant) -> Self {
        RemoteGateway {
            last_seen: now,
            epoch: None,
            gone: false,
            orphans: BTreeSet::new(),
            told: None,
            sent_lists: 0,
            sync_lost: false,
        }
    }
}

/// What an announcement (`P.gateway.G.alive`) changed.
#[derive(Debug, Default)]
pub struct Announced {
    pub gateway: String,
    /// The gateway had been counted gone and is back.
    pub revived: bool,
    /// To publish, in order: a sync if it reconnected to the bus, then its orphans if due.
    pub publish: Vec<BusMessage>,
}

/// A gateway's answer to the worker's inbox (`P.wk.<worker>.>`).
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// Its answer to a sync: these connections of it are gone; end them.
    Sync(Vec<ConnectionId>),
    /// Gateway `gateway` closed the orphans it was sent, `closed` (none: it answered an older
    /// list, and nothing changes).
    Orphans { gateway: String, closed: Vec<ConnectionId> },
    /// Not an answer the worker asked for.
    Unknown,
}

/// The gateways of the fleet as one worker sees them. See the module doc.
#[derive(Debug)]
pub struct Gateways {
    subjects: Subjects,
    worker: String,
    /// The gateway of every connection that sent a request and has not ended.
    routes: BTreeMap<ConnectionId, String>,
    gateways: BTreeMap<String, RemoteGateway>,
}

impl Gateways {
    /// The view of worker `worker` (its name on the bus, a subject token).
    pub fn new(subjects: Subjects, worker: &str) -> Self {
        Gateways { subjects, worker: worker.to_owned(), routes: BTreeMap::new(), gateways: BTreeMap::new() }
    }

    /// How many gateways this worker has heard from (and tracks).
    pub fn len(&self) -> usize {
        self.gateways.len()
    }

    /// Whether it has heard from none.
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }

    /// Where gateways answer this worker: `P.wk.<worker>.>`.
    pub fn inbox(&self) -> String {
        format!("{}.wk.{}.>", self.subjects.prefix(), self.worker)
    }

    /// The gateway connection `conn` came through, while it has not ended.
    pub fn route_of(&self, conn: &ConnectionId) -> Option<&str> {
        self.routes.get(conn).map(String::as_str)
    }

    /// The connections known to have come through gateway `g`, in id order.
    pub fn connections_on(&self, g: &str) -> Vec<ConnectionId> {
        self.routes.iter().filter(|(_, gw)| gw.as_str() == g).map(|(id, _)| *id).collect()
    }

    /// The routes of every live connection, as a store shared by several workers lists them
    /// (instead of those this worker saw requests from). A gateway named there and never heard
    /// is watched from `now` on: it may have died before this worker started.
    pub fn set_routes(&mut self, routes: impl IntoIterator<Item = (ConnectionId, String)>, now: Instant) {
        self.routes = routes.into_iter().collect();
        let named: BTreeSet<String> = self.routes.values().cloned().collect();
        for g in named {
            self.seen(&g, now);
        }
    }

    /// The orphans each gateway is still to be told, as a store shared by several workers lists
    /// them (instead of those this worker counted): any worker that hears a gateway tells it.
    /// A gateway named there and never heard is watched from `now` on, as in [`Self::set_routes`].
    pub fn set_orphans(&mut self, orphans: BTreeMap<String, BTreeSet<ConnectionId>>, now: Instant) {
        for gateway in self.gateways.values_mut() {
            gateway.orphans.clear();
        }
        for (g, conns) in orphans {
            self.seen(&g, now).orphans = conns;
        }
    }

    /// Connection `conn` ended: its route is forgotten.
    pub fn forget(&mut self, conn: &ConnectionId) {
        self.routes.remove(conn);
    }

    fn seen(&mut self, g: &str, now: Instant) -> &mut RemoteGateway {
        self.gateways.entry(g.to_owned()).or_insert_with(|| RemoteGateway::new(now))
    }

    /// A gateway counted gone is heard from again: its orphans are still to be told. Whether it
    /// was gone.
    fn revive(&mut self, g: &str) -> bool {
        match self.gateways.get_mut(g) {
            Some(gateway) if gateway.gone => {
                tracing::info!(gateway = %g, orphans = gateway.orphans.len(), "gateway back");
                gateway.gone = false;
                gateway.told = None;
                true
            }
            _ => false,
        }
    }

    /// A request from `conn` through gateway `g`: proof of life, as good as an announcement.
    /// Whether `g` had been counted gone.
    pub fn request_from(&mut self, g: &str, conn: ConnectionId, now: Instant) -> bool {
        let revived = self.revive(g);
        self.seen(g, now).last_seen = now;
        self.routes.insert(conn, g.to_owned());
        revived
    }

    /// An announcement; `None` when its subject names no gateway.
    pub fn announced(&mut self, msg: &BusMessage, now: Instant) -> Option<Announced> {
        let g = self.subjects.parse_alive(&msg.subject)?.to_owned();
        let revived = self.revive(&g);
        let epoch = msg.header(header::BUS_EPOCH).and_then(|e| e.parse::<u64>().ok());
        // Scanned only while its epoch is unknown (its first announcement), not every second.
        let epoch_unknown = self.gateways.get(&g).is_none_or(|gw| gw.epoch.is_none());
        let routed_here = epoch_unknown && self.routes.values().any(|r| *r == g);
        let gateway = self.seen(&g, now);
        gateway.last_seen = now;
        let reconnected = match gateway.epoch {
            Some(known) => Some(known) != epoch,
            // Heard so far only through requests (this worker started after its last
            // announcement): past its first bus connection, it may have reconnected since them.
            None => routed_here && epoch.is_some_and(|e| e > 1),
        };
        gateway.epoch = epoch;
        let sync_lost = std::mem::take(&mut gateway.sync_lost);
        let mut publish = Vec::new();
        if reconnected || sync_lost {
            // It was away from the bus: its disconnect notices of that time may be lost.
            publish.extend(self.sync(&g));
        }
        publish.extend(self.orphans_due(&g, now));
        Some(Announced { gateway: g, revived, publish })
    }

    /// The orphans list for gateway `g`, if one is due (never sent, or unanswered for
    /// [`RESEND_AFTER`]).
    fn orphans_due(&mut self, g: &str, now: Instant) -> Option<BusMessage> {
        let gateway = self.gateways.get_mut(g)?;
        let due = gateway.told.as_ref().is_none_or(|(at, _, _)| now >= *at + RESEND_AFTER);
        if gateway.gone || gateway.orphans.is_empty() || !due {
            return None;
        }
        let ids: Vec<ConnectionId> = gateway.orphans.iter().take(IDS_PER_MESSAGE).copied().collect();
        gateway.sent_lists += 1;
        let n = gateway.sent_lists;
        gateway.told = Some((now, n, ids.clone()));
        let reply = format!("{}.wk.{}.orphans.{g}.{n}", self.subjects.prefix(), self.worker);
        let msg = BusMessage::new(self.subjects.gateway(g, ToGateway::Orphans), contract::ids_payload(&ids));
        Some(msg.reply_to(reply))
    }

    /// Asks gateway `g` which of the connections the worker knows there are gone.
    fn sync(&self, g: &str) -> Vec<BusMessage> {
        let known = self.connections_on(g);
        let reply = format!("{}.wk.{}.sync.{g}", self.subjects.prefix(), self.worker);
        known
            .chunks(IDS_PER_MESSAGE)
            .map(|chunk| {
                BusMessage::new(self.subjects.gateway(g, ToGateway::Sync), contract::ids_payload(chunk))
                    .reply_to(reply.clone())
            })
            .collect()
    }

    /// A message on the worker's inbox: a gateway answered a sync or an orphans list.
    pub fn answered(&mut self, msg: &BusMessage) -> Answered {
        // `P.wk.<worker>.sync.<gateway>` or `P.wk.<worker>.orphans.<gateway>.<n>`, where a
        // gateway's route key may be more than one token.
        let rest = msg.subject.rsplit_once(".wk.").map(|(_, r)| r).unwrap_or_default();
        let (kind, tail) = rest.split_once('.').and_then(|(_, r)| r.split_once('.')).unzip();
        let tail = tail.unwrap_or_default();
        let (g, n) = match kind {
            Some("orphans") => tail.rsplit_once('.').map_or((tail, None), |(g, n)| (g, Some(n))),
            _ => (tail, None),
        };
        if msg.status.is_some() {
            // The server's "no responders": the gateway was not subscribed when the list came
            // (it is reconnecting and its subscriptions are not back yet). Not an answer: an
            // orphans list goes again after RESEND_AFTER, a sync at the next announcement.
            if kind == Some("sync")
                && let Some(gateway) = self.gateways.get_mut(g)
            {
                gateway.sync_lost = true;
            }
            return Answered::Unknown;
        }
        match kind {
            Some("sync") => Answered::Sync(
                contract::parse_ids(&msg.payload)
                    .into_iter()
                    .filter(|conn| self.routes.get(conn).map(String::as_str) == Some(g))
                    .collect(),
            ),
            Some("orphans") => {
                // The gateway closed what it was sent; the rest (if any) goes with the next
                // announcement.
                let mut closed = Vec::new();
                if let Some(gateway) = self.gateways.get_mut(g)
                    && let Some((_, sent_as, _)) = &gateway.told
                    && n.and_then(|n| n.parse::<u64>().ok()) == Some(*sent_as)
                    && let Some((_, _, sent)) = gateway.told.take()
                {
                    for id in &sent {
                        gateway.orphans.remove(id);
                    }
                    closed = sent;
                }
                Answered::Orphans { gateway: g.to_owned(), closed }
            }
            _ => Answered::Unknown,
        }
    }

    /// The gateways silent for [`GATEWAY_SILENT_AFTER`] and not yet counted gone, by name. Ask
    /// only while the worker itself is on the bus.
    pub fn silent(&self, now: Instant) -> Vec<String> {
        self.gateways
            .iter()
            .filter(|(_, gw)| !gw.gone && now >= gw.last_seen + GATEWAY_SILENT_AFTER)
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Gateway `g` is counted gone; `orphans` (its connections that held a session, which the
    /// worker has just ended) are remembered in case it comes back.
    pub fn gone(&mut self, g: &str, orphans: impl IntoIterator<Item = ConnectionId>, now: Instant) {
        let gateway = self.seen(g, now);
        gateway.gone = true;
        gateway.orphans.extend(orphans);
    }

    /// The worker is back on the bus after an absence: every gateway gets a fresh silence
    /// window and is asked which connections ended meanwhile. The syncs to publish, in order.
    pub fn worker_back(&mut self, now: Instant) -> Vec<BusMessage> {
        let names: Vec<String> = self.gateways.keys().cloned().collect();
        let mut publish = Vec::new();
        for g in names {
            self.seen(&g, now).last_seen = now;
            publish.extend(self.sync(&g));
        }
        publish
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u32) -> ConnectionId {
        format!("{n:032}").parse().unwrap()
    }

    fn announce(s: &Subjects, g: &str, epoch: u64) -> BusMessage {
        BusMessage::new(s.alive(g), Vec::new()).with(header::BUS_EPOCH, epoch.to_string())
    }

    #[test]
    fn a_silent_gateway_is_gone_and_its_orphans_are_told_when_it_is_back_until_acknowledged() {
        let s = Subjects::new("p");
        let mut gws = Gateways::new(s.clone(), "w1");
        let t0 = Instant::now();
        assert_eq!((gws.len(), gws.is_empty()), (0, true));
        assert!(!gws.request_from("gw1.x", conn(1), t0));
        assert!(!gws.request_from("gw1.x", conn(2), t0));
        assert_eq!(gws.route_of(&conn(1)), Some("gw1.x"));
        assert!(gws.silent(t0 + GATEWAY_SILENT_AFTER - Duration::from_millis(1)).is_empty());
        let t1 = t0 + GATEWAY_SILENT_AFTER;
        assert_eq!(gws.silent(t1), ["gw1.x"]);
        assert_eq!(gws.connections_on("gw1.x"), [conn(1), conn(2)]);
        assert_eq!((gws.len(), gws.is_empty()), (1, false));
        gws.forget(&conn(1));
        gws.forget(&conn(2));
        assert_eq!(gws.route_of(&conn(1)), None, "forgotten");
        assert!(gws.connections_on("gw1.x").is_empty());
        gws.gone("gw1.x", [conn(2)], t1);
        assert!(gws.silent(t1).is_empty(), "counted gone once");

        let back = gws.announced(&announce(&s, "gw1.x", 1), t1).unwrap();
        assert!(back.revived);
        let [orphans] = back.publish.as_slice() else { panic!("{:?}", back.publish) };
        assert_eq!(orphans.subject, s.gateway("gw1.x", ToGateway::Orphans));
        assert_eq!(contract::parse_ids(&orphans.payload), [conn(2)]);
        // Unanswered: not again before RESEND_AFTER, then again under a new number.
        assert!(gws.announced(&announce(&s, "gw1.x", 1), t1).unwrap().publish.is_empty());
        let again = gws.announced(&announce(&s, "gw1.x", 1), t1 + RESEND_AFTER).unwrap().publish;
        let reply = again[0].reply.clone().unwrap();
        assert_eq!(reply, "p.wk.w1.orphans.gw1.x.2");
        // The server's no-responders status on the reply subject is no acknowledgement.
        let mut nobody = BusMessage::new("p.wk.w1.orphans.gw1.x.2", Vec::new());
        nobody.status = Some(crate::NO_RESPONDERS);
        assert_eq!(gws.answered(&nobody), Answered::Unknown, "so the list goes again below");
        // An acknowledgement of the first list changes nothing; of the last, ends the telling.
        let ack = |n: u64| BusMessage::new(format!("p.wk.w1.orphans.gw1.x.{n}"), Vec::new());
        let closed = |ids: Vec<ConnectionId>| Answered::Orphans { gateway: "gw1.x".into(), closed: ids };
        assert_eq!(gws.answered(&ack(1)), closed(vec![]));
        assert_eq!(gws.announced(&announce(&s, "gw1.x", 1), t1 + RESEND_AFTER * 2).unwrap().publish.len(), 1);
        assert_eq!(gws.answered(&ack(3)), closed(vec![conn(2)]));
        assert!(gws.announced(&announce(&s, "gw1.x", 1), t1 + RESEND_AFTER * 4).unwrap().publish.is_empty());
    }

    #[test]
    fn a_gateway_back_on_the_bus_and_a_worker_back_on_it_ask_for_a_sync() {
        let s = Subjects::new("p");
        let mut gws = Gateways::new(s.clone(), "w1");
        let t0 = Instant::now();
        gws.request_from("gw1.x", conn(1), t0);
        gws.request_from("gw2.x", conn(2), t0);
        assert!(gws.announced(&announce(&s, "gw1.x", 1), t0).unwrap().publish.is_empty());
        // A new epoch: the gateway reconnected, its disconnect notices may be lost.
        let sync = gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish;
        assert_eq!(sync.len(), 1);
        assert_eq!(sync[0].subject, s.gateway("gw1.x", ToGateway::Sync));
        assert_eq!(sync[0].reply.as_deref(), Some("p.wk.w1.sync.gw1.x"));
        assert_eq!(contract::parse_ids(&sync[0].payload), [conn(1)]);
        // Only connections still routed through the answering gateway are ended.
        let answer = BusMessage::new("p.wk.w1.sync.gw1.x", contract::ids_payload(&[conn(1), conn(2)]));
        assert_eq!(gws.answered(&answer), Answered::Sync(vec![conn(1)]));
        // A sync that reached nobody (no responders) is sent again at the next announcement.
        assert!(gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish.is_empty());
        let mut nobody = BusMessage::new("p.wk.w1.sync.gw1.x", Vec::new());
        nobody.status = Some(crate::NO_RESPONDERS);
        assert_eq!(gws.answered(&nobody), Answered::Unknown);
        let again = gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish;
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish.is_empty(), "once");
        assert_eq!(gws.answered(&BusMessage::new("p.wk.w1.other.gw1.x", Vec::new())), Answered::Unknown);
        // The worker back from an absence: every gateway's silence starts again, each is asked.
        let later = t0 + GATEWAY_SILENT_AFTER * 2;
        assert_eq!(gws.silent(later), ["gw1.x", "gw2.x"]);
        assert_eq!(gws.worker_back(later).len(), 2);
        assert!(gws.silent(later).is_empty());
    }

    #[test]
    fn a_gateway_known_only_by_its_requests_is_asked_for_a_sync_when_first_heard_on_a_later_epoch() {
        let s = Subjects::new("p");
        let mut gws = Gateways::new(s.clone(), "w1");
        let t0 = Instant::now();
        // Requests but no announcement yet: its epoch when they were sent is unknown.
        gws.request_from("gw1.x", conn(1), t0);
        gws.request_from("gw2.x", conn(2), t0);
        let sync = gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish;
        assert_eq!(sync.len(), 1, "{sync:?}");
        assert_eq!(contract::parse_ids(&sync[0].payload), [conn(1)]);
        assert!(gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish.is_empty(), "once");
        // Still on its first connection: nothing can have been lost.
        assert!(gws.announced(&announce(&s, "gw2.x", 1), t0).unwrap().publish.is_empty());
        // Never heard before at all: nothing to ask about.
        assert!(gws.announced(&announce(&s, "gw3.x", 5), t0).unwrap().publish.is_empty());

        // The only gateway a worker knows, by its requests alone.
        let mut gws = Gateways::new(s.clone(), "w1");
        gws.request_from("gw1.x", conn(1), t0);
        assert_eq!(gws.announced(&announce(&s, "gw1.x", 2), t0).unwrap().publish.len(), 1);
    }

    /// On a store shared by workers, the routes come from the store: each connection's gateway,
    /// and a gateway named there and never heard is watched (counted gone after its silence).
    #[test]
    fn routes_set_from_a_store_replace_those_seen_and_watch_their_gateways() {
        let s = Subjects::new("p");
        let mut gws = Gateways::new(s.clone(), "w2");
        let t0 = Instant::now();
        gws.request_from("gw1.x", conn(1), t0);
        let t1 = t0 + Duration::from_secs(1);
        gws.set_routes([(conn(2), "gw1.x".to_owned()), (conn(3), "gw2.x".to_owned())], t1);
        assert_eq!(gws.route_of(&conn(1)), None, "the store's list is the whole list");
        assert_eq!(gws.connections_on("gw1.x"), [conn(2)]);
        assert_eq!(gws.route_of(&conn(3)), Some("gw2.x"));
        assert_eq!(gws.len(), 2);
        // gw1.x's silence counts from its request; gw2.x's from when the list named it.
        assert_eq!(gws.silent(t0 + GATEWAY_SILENT_AFTER), ["gw1.x"]);
        assert_eq!(gws.silent(t1 + GATEWAY_SILENT_AFTER), ["gw1.x", "gw2.x"]);
    }

    /// On a store shared by workers, the orphans come from the store: a worker that never
    /// counted the gateway gone tells it at its next announcement, and a gateway named only
    /// there is watched.
    #[test]
    fn orphans_set_from_a_store_are_told_by_a_worker_that_never_counted_their_gateway_gone() {
        let s = Subjects::new("p");
        let mut gws = Gateways::new(s.clone(), "w2");
        let t0 = Instant::now();
        assert!(gws.announced(&announce(&s, "gw1.x", 1), t0).unwrap().publish.is_empty());
        let listed = |pairs: &[(&str, u32)]| {
            let mut orphans: BTreeMap<String, BTreeSet<ConnectionId>> = BTreeMap::new();
            for (g, n) in pairs {
                orphans.entry((*g).to_owned()).or_default().insert(conn(*n));
            }
            orphans
        };
        gws.set_orphans(listed(&[("gw1.x", 1), ("gw1.x", 2), ("gw9.x", 9)]), t0);
        let told = gws.announced(&announce(&s, "gw1.x", 1), t0).unwrap();
        assert!(!told.revived, "never counted gone here");
        let [list] = told.publish.as_slice() else { panic!("{:?}", told.publish) };
        assert_eq!(contract::parse_ids(&list.payload), [conn(1), conn(2)]);
        // Another worker's acknowledgement cleared conn(2) in the store meanwhile: the answer
        // still names what this worker sent, for it to clear too.
        gws.set_orphans(listed(&[("gw1.x", 1)]), t0);
        let ack = BusMessage::new("p.wk.w2.orphans.gw1.x.1", Vec::new());
        let closed = vec![conn(1), conn(2)];
        assert_eq!(gws.answered(&ack), Answered::Orphans { gateway: "gw1.x".into(), closed });
        gws.set_orphans(listed(&[]), t0);
        assert!(gws.announced(&announce(&s, "gw1.x", 1), t0 + RESEND_AFTER).unwrap().publish.is_empty());
        // gw9.x, never heard: counted gone after its silence, like a gateway named by a route.
        assert_eq!(gws.silent(t0 + GATEWAY_SILENT_AFTER), ["gw9.x"]);
    }
}
