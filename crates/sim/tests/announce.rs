//! A gateway on the simulated bus announces itself every second on `P.gateway.G.alive` with its
//! open connections summed over its shards (docs/nats.md), as connections come and go.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use clientmq_bus::contract::header;
use clientmq_bus::{Bus, Subscription};
use clientmq_server::BusBackend;
use clientmq_server::{Server, ServerConfig};
use clientmq_sim::bus::SimBus;
use clientmq_sim::run::{BUS, SimListener, bus_host};
use clientmq_sim::trace::now;
use clientmq_testkit::rawws;

/// Sleeps until `secs` of simulated time.
async fn until(secs: f64) {
    let at = Duration::from_secs_f64(secs);
    if at > now() {
        tokio::time::sleep(at - now()).await;
    }
}

#[test]
fn a_gateway_announces_its_open_connections_every_second() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(3)
        .epoch(UNIX_EPOCH)
        .simulation_duration(Duration::from_secs(30))
        .build();
    bus_host(&mut sim, None, None);
    sim.host("gateway", || async {
        let mut config = ServerConfig { shards: 2, seed: Some(1), ..ServerConfig::default() };
        config.gateway.route_key = "g1".into();
        config.gateway.tokens = clientmq_core::TokenPolicy::AcceptAny;
        let bus = BusBackend::new(SimBus::connect(BUS, "g1"), "clientmq", "g1", Duration::from_secs(5));
        let server = Server::start(config, Arc::new(bus));
        server.run(SimListener(turmoil::net::TcpListener::bind("0.0.0.0:8080").await?)).await;
        Ok(())
    });
    let announced = Arc::new(Mutex::new(Vec::new()));
    let log = announced.clone();
    sim.client("watcher", async move {
        let bus = SimBus::connect(BUS, "watcher");
        let mut alive = bus.subscribe("clientmq.gateway.*.alive", None).await?;
        while now() < Duration::from_millis(9500) {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), alive.next()).await else {
                continue;
            };
            let open = msg.header(header::CONNECTIONS).unwrap_or("-").to_owned();
            log.lock().unwrap().push((now().as_secs_f64(), msg.subject, open));
        }
        Ok(())
    });
    sim.client("clients", async {
        until(2.0).await;
        let mut sockets = Vec::new();
        for _ in 0..3 {
            let mut s = turmoil::net::TcpStream::connect("gateway:8080").await?;
            assert_eq!(rawws::upgrade(&mut s, "/ws", &[]).await?, 101);
            sockets.push(s);
        }
        until(5.0).await;
        drop(sockets.pop());
        until(10.0).await;
        Ok(())
    });
    sim.run()?;

    let announced = announced.lock().unwrap().clone();
    let between = |from: f64, to: f64| -> Vec<&str> {
        announced.iter().filter(|(at, _, _)| (from..to).contains(at)).map(|(_, _, n)| n.as_str()).collect()
    };
    assert!(announced.iter().all(|(_, subject, _)| subject == "clientmq.gateway.g1.alive"));
    let (before, three, two) = (between(0.0, 2.0), between(3.0, 5.0), between(6.0, 9.5));
    assert!(!before.is_empty() && before.iter().all(|n| *n == "0"), "before any client: {announced:?}");
    assert!(three.len() >= 2 && three.iter().all(|n| *n == "3"), "three clients: {announced:?}");
    assert!(two.len() >= 3 && two.iter().all(|n| *n == "2"), "one left: {announced:?}");
    Ok(())
}
