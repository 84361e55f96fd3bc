//! The real NATS binding under the faults the simulator plays: a gateway reaches nats-server
//! through a proxy the test stalls (bytes held, the sockets open) or cuts (sockets closed, new
//! ones refused), and connections end while it is away.
//!
//! - A stall past the worker's silence bound: the worker counts the gateway gone; when the
//!   gateway is heard again the worker sends its orphans list, the gateway closes each orphan
//!   with 3336 and answers, and the clients resume their sessions.
//! - A cut shorter than that bound: the gateway's notice of a connection that ended meanwhile
//!   is lost; the gateway's new bus epoch makes the worker send a sync, the gateway answers
//!   which connections are gone, and the worker detaches exactly that session.

use std::time::Duration;

use clientmq_core::proto::{chat, pcast};
use clientmq_testkit::client::Client;
use clientmq_testkit::nats::Nats;
use clientmq_testkit::procs::{Log, Proc, free_port, scrape, wait_for, wait_listening, workspace_binary};
use clientmq_testkit::rawws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TOKEN: &str = "cut-token";

/// What the proxy does with the bytes between the gateway and nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Bytes are held (read by nobody), the sockets stay open: a stalled path.
    Stall,
    /// Every socket is closed and new ones are closed at once.
    Cut,
}

/// A TCP proxy to nats-server that the test stalls, cuts and restores.
struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = modes.subscribe();
                if *mode.borrow() == Mode::Cut {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Either direction ending (or a cut) ends both: the halves drop together.
                    tokio::select! {
                        _ = pipe(cr, sw, mode.clone()) => {}
                        _ = pipe(sr, cw, mode) => {}
                    }
                });
            }
        });
        Proxy { port, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Copies `from` to `to` while the mode allows; returns on EOF, an error or a cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Stalled: read nothing until forwarding again (or cut).
        let Ok(now) = mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else { return };
        if now == Mode::Cut {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Read just before a stall: held until it ends, like the rest.
                let Ok(now) = mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m) else { return };
                if now == Mode::Cut || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = mode.changed() => {}
        }
    }
}

/// Gateway `name` on the bus at `url`, listening on `port`.
fn spawn_gateway(url: &str, port: u16, name: &str, log: &Log) -> Proc {
    let args =
        ["--nats", url, "--listen", &format!("127.0.0.1:{port}"), "--gateway-name", name, "--tokens", TOKEN]
            .map(str::to_owned);
    Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, name, log)
}

/// nats-server, a chat worker on it, and gateway `gw1` on it through the proxy.
struct Fleet {
    nats: Nats,
    proxy: Proxy,
    gateway: u16,
    worker: u16,
    log: Log,
    procs: Vec<Proc>,
}

impl Fleet {
    async fn start() -> Fleet {
        let log = Log::default();
        let nats = Nats::start(&log).await;
        let nats_port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
        let proxy = Proxy::start(nats_port).await;
        let (gateway, worker) = (free_port(), free_port());
        let worker_args = [
            "--nats",
            &nats.url(),
            "--session-grace-secs",
            "120",
            "--seed",
            "7",
            "--listen",
            &format!("127.0.0.1:{worker}"),
            "--memory",
        ]
        .map(str::to_owned);
        let chat =
            Proc::spawn(&workspace_binary("clientmq-chat").display().to_string(), &worker_args, "chat", &log);
        let gw = spawn_gateway(&format!("nats://127.0.0.1:{}", proxy.port), gateway, "gw1", &log);
        wait_listening(worker, "the worker's /metrics").await;
        wait_listening(gateway, "the gateway").await;
        let fleet = Fleet { nats, proxy, gateway, worker, log, procs: vec![chat, gw] };
        wait_for(Duration::from_secs(20), "the fleet to serve", &fleet.log, || async {
            scrape(fleet.gateway, "clientmq_bus_connected").await == 1.0
                && scrape(fleet.worker, "clientmq_chat_bus_connected").await == 1.0
        })
        .await;
        fleet
    }

    /// A second gateway, straight on nats-server (no proxy); its port.
    async fn direct_gateway(&mut self, name: &str) -> u16 {
        let port = free_port();
        self.procs.push(spawn_gateway(&self.nats.url(), port, name, &self.log));
        wait_listening(port, name).await;
        wait_for(Duration::from_secs(20), "the second gateway on the bus", &self.log, || async {
            scrape(port, "clientmq_bus_connected").await == 1.0
        })
        .await;
        port
    }

    async fn detached(&self) -> f64 {
        scrape(self.worker, "clientmq_chat_sessions_detached").await
    }
}

/// A client authenticated on the gateway (resuming `session` if given); its session id.
async fn member(port: u16, name: &str, session: Option<String>) -> (Client, String) {
    let mut c = Client::connect_when_up(port).await.named(name);
    let auth = pcast::Authenticate {
        client_version: "test".into(),
        device_id: name.into(),
        platform: "test".into(),
        platform_version: "1".into(),
        authentication_token: TOKEN.into(),
        session_id: session,
        ..Default::default()
    };
    let r: pcast::AuthenticateResponse = c.call_decoded("pcast.Authenticate", auth).await;
    assert_eq!(r.status, "ok", "{name}: {r:?}");
    (c, r.session_id.unwrap())
}

/// Whether `c` hears a room event within `within` (answers it may get are kept aside).
async fn hears_event(c: &mut Client, within: Duration) -> bool {
    use clientmq_core::proto::mq::message::MessageType;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Some(msg) if msg.message_type == Some(MessageType::Event as i32) => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// Joins the room with alias `cut` (creating it if needed).
async fn join(c: &mut Client, session: &str) {
    let room = chat::Room {
        alias: Some("cut".into()),
        name: "cut".into(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let create = chat::CreateRoom { session_id: session.into(), room };
    let created: chat::CreateRoomResponse = c.call_decoded("chat.CreateRoom", create).await;
    let member = chat::Member { session_id: session.into(), screen_name: "m".into(), ..Default::default() };
    let join = chat::JoinRoom {
        room_id: created.room.unwrap().room_id,
        session_id: session.into(),
        member,
        ..Default::default()
    };
    let joined: chat::JoinRoomResponse = c.call_decoded("chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
}

/// The close code the gateway ends `c` with, within `within` (events before it are skipped).
async fn closed_with(c: &mut Client, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_frame_within(left).await? {
            Ok(Some(f)) if f.opcode == rawws::CLOSE => return f.close_code(),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stalled_past_the_silence_bound_closes_its_orphans_when_it_is_back() {
    clientmq_testkit::deadline::bounded(async {
        let fleet = Fleet::start().await;
        let (mut a, sa) = member(fleet.gateway, "a", None).await;
        join(&mut a, &sa).await;
        let (mut c, sc) = member(fleet.gateway, "c", None).await;
        join(&mut c, &sc).await;
        let (mut b, _) = member(fleet.gateway, "b", None).await;

        fleet.proxy.set(Mode::Stall);
        b.close(1000, "bye").await; // its end cannot reach the worker
        drop(b);
        // 5 s of silence and the worker's tick: every session on gw1 detached.
        wait_for(Duration::from_secs(20), "the worker to count gw1 gone", &fleet.log, || async {
            fleet.detached().await == 3.0
        })
        .await;
        fleet.proxy.set(Mode::Forward);

        // Back: the orphans list arrives (or arrives again) and both orphans are closed.
        for (client, name) in [(&mut a, "a"), (&mut c, "c")] {
            let code = closed_with(client, Duration::from_secs(30)).await;
            let metrics = clientmq_testkit::procs::http_get(fleet.gateway, "/metrics").await.1;
            let metrics: Vec<&str> =
                metrics.lines().filter(|l| l.contains("bus") && !l.starts_with('#')).collect();
            assert_eq!(
                code,
                Some(3336),
                "{name} closed as an orphan:\n{}\n{}",
                fleet.log.lock().unwrap().join("\n"),
                metrics.join("\n")
            );
        }
        // They resume their sessions (within the grace period) and are members still.
        let (mut a2, resumed) = member(fleet.gateway, "a2", Some(sa.clone())).await;
        assert_eq!(resumed, sa, "the same session");
        let info = chat::GetRoomInfo { alias: Some("cut".into()), ..Default::default() };
        let info: chat::GetRoomInfoResponse = a2.call_decoded("chat.GetRoomInfo", info).await;
        let members: Vec<&str> = info.members.iter().map(|m| m.session_id.as_str()).collect();
        assert!(members.contains(&sa.as_str()) && members.contains(&sc.as_str()), "{members:?}");
        wait_for(Duration::from_secs(10), "a's session attached again", &fleet.log, || async {
            fleet.detached().await == 2.0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_ended_during_a_short_cut_is_found_by_the_sync() {
    clientmq_testkit::deadline::bounded(async {
        let fleet = Fleet::start().await;
        let (mut a, sa) = member(fleet.gateway, "a", None).await;
        join(&mut a, &sa).await;
        let (mut b, _) = member(fleet.gateway, "b", None).await;
        let failures = scrape(fleet.gateway, "clientmq_bus_publish_failures_total").await;

        fleet.proxy.set(Mode::Cut);
        wait_for(Duration::from_secs(10), "gw1 to notice the cut", &fleet.log, || async {
            scrape(fleet.gateway, "clientmq_bus_connected").await == 0.0
        })
        .await;
        b.close(1000, "bye").await;
        drop(b);
        wait_for(Duration::from_secs(5), "b's notice to be lost", &fleet.log, || async {
            scrape(fleet.gateway, "clientmq_bus_publish_failures_total").await > failures
        })
        .await;
        fleet.proxy.set(Mode::Forward);

        // The worker never counted gw1 gone (the cut was short): only the sync can tell it.
        wait_for(Duration::from_secs(20), "the sync to detach b's session", &fleet.log, || async {
            fleet.detached().await == 1.0
        })
        .await;
        // a was never an orphan: still open and served.
        let info = chat::GetRoomInfo { alias: Some("cut".into()), ..Default::default() };
        let info: chat::GetRoomInfoResponse = a.call_decoded("chat.GetRoomInfo", info).await;
        assert_eq!(info.status, "ok");
        assert_eq!(closed_with(&mut a, Duration::from_millis(500)).await, None, "a stays open");
    })
    .await;
}

/// A subscription change lost during a cut shorter than the silence bound: a session taken
/// over through another gateway while gw1 was away. Back on the bus, gw1 drops what its
/// connections hear and has the worker tell them again: the old connection hears the room no
/// more, and a member that stayed on gw1 hears it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_over_during_a_short_cut_is_not_heard_on_its_old_connection() {
    clientmq_testkit::deadline::bounded(async {
        let mut fleet = Fleet::start().await;
        let gw2 = fleet.direct_gateway("gw2").await;
        let (mut a, sa) = member(fleet.gateway, "a", None).await;
        join(&mut a, &sa).await;
        let (mut b, sb) = member(fleet.gateway, "b", None).await;
        join(&mut b, &sb).await;
        assert!(hears_event(&mut a, Duration::from_secs(5)).await, "a hears b arrive");
        assert_eq!(scrape(fleet.gateway, "clientmq_subscriptions").await, 2.0);

        fleet.proxy.set(Mode::Cut);
        wait_for(Duration::from_secs(10), "gw1 to notice the cut", &fleet.log, || async {
            scrape(fleet.gateway, "clientmq_bus_connected").await == 0.0
        })
        .await;
        // a's session resumes through gw2: the worker's word to gw1 that a no longer hears the
        // room is lost.
        let (mut a2, resumed) = member(gw2, "a2", Some(sa.clone())).await;
        assert_eq!(resumed, sa);
        fleet.proxy.set(Mode::Forward);
        // Back, gw1 holds b's subscription only.
        wait_for(Duration::from_secs(20), "gw1 back, and a hearing the room no more", &fleet.log, || async {
            scrape(fleet.gateway, "clientmq_bus_connected").await == 1.0
                && scrape(fleet.gateway, "clientmq_subscriptions").await == 1.0
        })
        .await;
        let told = r#"clientmq_bus_resubscribes_total{outcome="told"}"#;
        assert_eq!(scrape(fleet.gateway, told).await, 1.0);
        // What they heard before is read first.
        for c in [&mut a, &mut b, &mut a2] {
            while hears_event(c, Duration::from_millis(300)).await {}
        }
        let (mut d, sd) = member(gw2, "d", None).await;
        join(&mut d, &sd).await;
        assert!(hears_event(&mut a2, Duration::from_secs(5)).await, "a2 hears d arrive");
        assert!(hears_event(&mut b, Duration::from_secs(5)).await, "b, on gw1, hears d arrive");
        assert!(!hears_event(&mut a, Duration::from_secs(1)).await, "a no longer holds the session");
    })
    .await;
}
