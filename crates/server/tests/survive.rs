//! A fleet whose workers keep everything in the store (`clientmq-chat`'s default) loses nothing
//! when one process dies, driven by the unmodified Phenix SDK (`interop/survive.js`): two clients
//! on two gateways share a room by alias and chat; then the only worker is SIGKILLed and started
//! again, or one of two workers is, or one node of a three-node NATS cluster whose streams have
//! three replicas; or the two workers are restarted one after the other (SIGTERM: each drains)
//! while the two chat and eight more connections keep requests in flight, and not one request
//! fails. Afterwards both keep their sessions,
//! nobody saw a member leave, chat goes on
//! both ways with every message once and in order, and a newcomer finds the room by alias with
//! its members and whole conversation. (A killed gateway: `fleet.rs`, on the store too.)

use std::time::Duration;

use clientmq_core::proto::{chat, mq, pcast};
use clientmq_testkit::client::Client;
use clientmq_testkit::nats::{Nats, NatsCluster};
use clientmq_testkit::node::{Asking, interop_dir, judged, npm_ci};
use clientmq_testkit::procs::{
    Log, Proc, free_port, http_get, target_dir, wait_for, wait_listening, workspace_binary,
};
use prost::Message as _;

const TOKEN: &str = "survive-token";
const HARNESS_TIMEOUT: Duration = Duration::from_secs(150);

/// The process that dies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The only worker, started again.
    OnlyWorker,
    /// One of two workers, not started again.
    OneOfTwoWorkers,
    /// One node of a three-node cluster, not started again.
    NatsNode,
    /// A rolling restart of two workers, chat flowing throughout: each in turn is stopped
    /// (SIGTERM: it drains) and its successor started; not one send may fail.
    Rolling,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_worker_killed_and_started_again_loses_nothing() {
    survive(Fault::OnlyWorker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_workers_killed_loses_nothing() {
    survive(Fault::OneOfTwoWorkers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_workers_fails_no_request() {
    survive(Fault::Rolling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_of_three_killed_loses_nothing() {
    survive(Fault::NatsNode).await;
}

/// A stored worker, and the port of its `/readyz`.
fn worker(urls: &str, replicas: usize, log: &Log) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--nats", urls, "--store-replicas", &replicas.to_string()]
        .into_iter()
        .chain(["--session-grace-secs", "30", "--listen", &listen])
        .map(str::to_owned)
        .collect::<Vec<_>>();
    (Proc::spawn(&workspace_binary("clientmq-chat").display().to_string(), &args, "chat", log), port)
}

fn gateway(urls: &str, port: u16, name: &str, log: &Log) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let args =
        ["--nats", urls, "--listen", &listen, "--gateway-name", name, "--tokens", TOKEN, "--shards", "1"]
            .map(str::to_owned);
    Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, name, log)
}

/// Connections that keep requests in flight through a rolling restart, and the workers it
/// restarts one after the other (of two: the first comes round again).
const LOAD_CLIENTS: usize = 16;
const RESTARTS: usize = 4;

/// One connection through gateway `port` asking (`chat.GetRoomInfo`) until `stop`, each request
/// answered before the next and paced under the gateway's rate (50 a second): how many a worker
/// answered, and the `mq.Error` reason of each it did not (a gateway answers `timeout` for one
/// a worker took and never answered).
async fn load(port: u16, mut stop: tokio::sync::watch::Receiver<bool>) -> (usize, Vec<String>) {
    let mut c = Client::connect(("127.0.0.1", port)).await;
    let auth = pcast::Authenticate { authentication_token: TOKEN.into(), ..Default::default() };
    let a: pcast::AuthenticateResponse = c.call_decoded("pcast.Authenticate", auth).await;
    assert_eq!(a.status, "ok");
    let ask = chat::GetRoomInfo { alias: Some("nowhere".into()), ..Default::default() };
    let (mut answered, mut failed) = (0, Vec::new());
    while !*stop.borrow_and_update() {
        let id = c.request("chat.GetRoomInfo", ask.encode_to_vec()).await;
        let reply = c.answer_within(&id, Duration::from_secs(20)).await;
        if reply.r#type == "chat.GetRoomInfoResponse" {
            answered += 1;
        } else {
            failed
                .push(mq::Error::decode(reply.payload.as_slice()).map(|e| e.reason).unwrap_or(reply.r#type));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.close(1000, "done").await;
    (answered, failed)
}

/// The answer to request `ty`, if it is its response with status `ok`.
async fn ok<R: prost::Message + Default>(c: &mut Client, ty: &str, req: impl prost::Message) -> Option<R> {
    let reply = c.call(ty, req.encode_to_vec()).await;
    let r = (reply.r#type == format!("{ty}Response")).then(|| R::decode(reply.payload.as_slice()).ok())??;
    Some(r)
}

/// Whether the fleet behind gateway `port` writes to every part of the store and reads it back: a
/// fresh client authenticates (a session), creates and joins a room (an alias, a room), sends to
/// it (the history) and fetches the conversation (a consumer), each answered `ok`. (The test client panics on what it does not expect: run apart,
/// a panic is a "not yet".)
async fn writes(port: u16) -> bool {
    let probe = async move {
        let mut c = Client::connect(("127.0.0.1", port)).await;
        let auth = pcast::Authenticate { authentication_token: TOKEN.into(), ..Default::default() };
        let a: pcast::AuthenticateResponse = ok(&mut c, "pcast.Authenticate", auth).await?;
        (a.status == "ok").then_some(())?;
        let alias = format!("probe-{}", free_port());
        let room = chat::Room { alias: Some(alias.clone()), name: "probe".into(), ..Default::default() };
        let made: chat::CreateRoomResponse =
            ok(&mut c, "chat.CreateRoom", chat::CreateRoom { room, ..Default::default() }).await?;
        (made.status == "ok").then_some(())?;
        let join = chat::JoinRoom { alias: Some(alias), ..Default::default() };
        let joined: chat::JoinRoomResponse = ok(&mut c, "chat.JoinRoom", join).await?;
        (joined.status == "ok").then_some(())?;
        let room_id = joined.room.and_then(|r| r.room_id).unwrap_or_default();
        let message = chat::ChatMessage { message: "probe".into(), ..Default::default() };
        let send = chat::SendMessageToRoom { room_id: room_id.clone(), chat_message: message };
        let sent: chat::SendMessageToRoomResponse = ok(&mut c, "chat.SendMessageToRoom", send).await?;
        (sent.status == "ok").then_some(())?;
        let fetch = chat::FetchRoomConversation { room_id: room_id.clone(), limit: 10, ..Default::default() };
        let read: chat::FetchRoomConversationResponse =
            ok(&mut c, "chat.FetchRoomConversation", fetch).await?;
        c.close(1000, "done").await;
        (read.status == "ok" && read.chat_messages.len() == 1).then_some(())
    };
    let probe = tokio::spawn(tokio::time::timeout(Duration::from_secs(10), probe));
    matches!(probe.await, Ok(Ok(Some(()))))
}

async fn survive(fault: Fault) {
    clientmq_testkit::deadline::bounded(async {
        let dir = interop_dir();
        npm_ci(&dir, "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let log = Log::default();
        let store_dir = target_dir().join(format!("tmp/survive-{}", free_port()));
        let (mut single, mut cluster) = (None, None);
        let (urls, replicas) = match fault {
            Fault::NatsNode => {
                let c = NatsCluster::start(&log, &store_dir).await;
                let urls = c.urls();
                cluster = Some(c);
                (urls, 3)
            }
            _ => {
                let store = store_dir.display().to_string();
                let n = Nats::start_with(&log, &["-js", "-sd", &store]).await;
                let url = n.url();
                single = Some(n);
                (url, 1)
            }
        };
        let mut workers = vec![worker(&urls, replicas, &log)];
        if matches!(fault, Fault::OneOfTwoWorkers | Fault::Rolling) {
            workers.push(worker(&urls, replicas, &log));
        }
        let (p1, p2) = (free_port(), free_port());
        let gateways = [gateway(&urls, p1, "gw1", &log), gateway(&urls, p2, "gw2", &log)];
        for port in [p1, p2] {
            wait_listening(port, "a gateway").await;
            wait_for(Duration::from_secs(40), "the fleet to write to the store", &log, || writes(port)).await;
        }

        let env = [("CLIENTMQ_GW1_PORT", p1.to_string()), ("CLIENTMQ_GW2_PORT", p2.to_string())];
        let mut env = [env.as_slice(), &[("CLIENTMQ_TOKEN", TOKEN.to_owned())]].concat();
        if fault == Fault::Rolling {
            env.push(("CLIENTMQ_CHAT_THROUGH_FAULT", "1".to_owned()));
        }
        let mut harness = Asking::spawn("survive.js", &dir, &env, &log);
        let run = async {
            while let Some(what) = harness.next_ask().await {
                assert_eq!(what, "fault", "the only thing the harness asks for");
                match fault {
                    Fault::OnlyWorker => {
                        workers.remove(0).0.kill().await;
                        workers.push(worker(&urls, replicas, &log));
                    }
                    Fault::OneOfTwoWorkers => workers.remove(0).0.kill().await,
                    Fault::NatsNode => cluster.as_mut().expect("a cluster").nodes[0].stop().await,
                    Fault::Rolling => {
                        let (stop, stopped) = tokio::sync::watch::channel(false);
                        let loads: Vec<_> = (0..LOAD_CLIENTS)
                            .map(|i| tokio::spawn(load([p1, p2][i % 2], stopped.clone())))
                            .collect();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        for _ in 0..RESTARTS {
                            // The oldest drains and exits once its successor takes requests
                            // (its `/readyz`): what an operator waits for.
                            let (successor, port) = worker(&urls, replicas, &log);
                            wait_for(
                                Duration::from_secs(40),
                                "the successor to take requests",
                                &log,
                                || async move { http_get(port, "/readyz").await.0 == 200 },
                            )
                            .await;
                            workers.push((successor, port));
                            workers.remove(0).0.terminate(Duration::from_secs(40)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        stop.send(true).unwrap();
                        let (mut answered, mut failed) = (0, Vec::new());
                        for l in loads {
                            let (a, f) = l.await.expect("a load client");
                            answered += a;
                            failed.extend(f);
                        }
                        assert!(failed.is_empty(), "requests failed through the rolling restart: {failed:?}");
                        assert!(answered >= 100, "only {answered} requests through the rolling restart");
                    }
                }
                // Through both gateways: either may have been on the node that died.
                for port in [p1, p2] {
                    let what = "the fleet to write to and read the store again";
                    wait_for(Duration::from_secs(40), what, &log, || writes(port)).await;
                }
                harness.answer("done").await;
            }
            harness.exit().await
        };
        let outcome = tokio::time::timeout(HARNESS_TIMEOUT, run).await;
        judged(outcome, HARNESS_TIMEOUT, "ok - survive harness passed", &log);
        for p in gateways.into_iter().chain(workers.into_iter().map(|(w, _)| w)) {
            p.kill().await;
        }
        drop((single, cluster));
        let _ = std::fs::remove_dir_all(&store_dir);
    })
    .await
}
