//! TCP, TLS and the HTTP upgrade: everything before a WebSocket exists.

use std::sync::Arc;
use std::time::Duration;

use clientmq_server::tls::Acceptor;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::harness::{HANDSHAKE, MS, Raw, WAIT, drained, http, start_test};

/// A request head with the upgrade headers a browser sends, minus what `skip` names, plus `extra`.
fn upgrade_head(method: &str, path: &str, skip: &[&str], extra: &str) -> Vec<u8> {
    let headers = [
        ("Host", "clientmq"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers.iter().filter(|(name, _)| !skip.contains(name)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head.into_bytes()
}

/// A self-signed certificate for `localhost`: the server's acceptor and a client that trusts it.
fn tls_pair() -> (Acceptor, TlsConnector) {
    let cert = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("clientmq-bad-inputs-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = clientmq_server::tls::acceptor(&cert_path, &key_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    (Acceptor(acceptor), TlsConnector::from(Arc::new(client)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_drops_plain_http_and_unfinished_handshakes() {
    clientmq_testkit::deadline::bounded(async {
        let (acceptor, connector) = tls_pair();
        let gw = start_test(|c| c.tls = Some(acceptor)).await;
        let failed = || gw.metric("clientmq_tls_handshakes_failed_total");

        // Plain HTTP to the TLS port: not a ClientHello, dropped at once with no HTTP answer.
        let mut plain = gw.tcp().await;
        plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (out, took) = drained(&mut plain).await;
        assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1"), "no plain answer: {out:?}");
        assert!(took < HANDSHAKE, "refused at once, not at the timeout ({took:?})");
        clientmq_testkit::deadline::eventually(WAIT, "one TLS failure counted", || failed() == 1.0).await;

        // A ClientHello that never finishes, and a socket that says nothing: dropped at the timeout.
        for opening in [&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..], &[][..]] {
            let mut s = gw.tcp().await;
            s.write_all(opening).await.unwrap();
            let (out, took) = drained(&mut s).await;
            assert!(out.is_empty() || !String::from_utf8_lossy(&out).contains("HTTP/1.1"));
            assert!(took >= HANDSHAKE - 50 * MS, "not before the handshake timeout ({took:?})");
        }
        clientmq_testkit::deadline::eventually(WAIT, "three TLS failures counted", || failed() == 3.0).await;
        gw.expect("clientmq_http_responses_total{status=\"400\"}", 0.0).await;

        // A real TLS client is still served.
        let tls =
            connector.connect(ServerName::try_from("localhost").unwrap(), gw.tcp().await).await.unwrap();
        let mut fresh = Raw::upgrade(tls, &[]).await;
        assert_eq!(fresh.call("mq.PingPong", vec![8, 1]).await.r#type, "mq.PingPongResponse");
        fresh.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_dropped_at_the_handshake_timeout() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let mut s = gw.tcp().await;
        let (out, took) = drained(&mut s).await;
        assert!(out.is_empty(), "nothing is answered: {out:?}");
        assert!(took >= HANDSHAKE - 50 * MS && took < HANDSHAKE + Duration::from_secs(1), "{took:?}");
        gw.expect("clientmq_handshakes_timed_out_total", 1.0).await;
        assert!(!gw.server.metrics_text().contains("clientmq_http_responses_total{"));
        gw.expect("clientmq_handshakes_refused_total", 0.0).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_dropped_at_the_handshake_timeout_however_it_trickles() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let (mut rd, mut wr) = gw.tcp().await.into_split();
        let reader = tokio::spawn(async move { drained(&mut rd).await });
        let head = upgrade_head("GET", "/ws", &[], "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        let started = tokio::time::Instant::now();
        let mut sent = 0;
        // One byte every 20 ms: each read is quick, the head never ends in time.
        while !reader.is_finished() && sent < head.len() {
            assert!(started.elapsed() < WAIT, "still open after {WAIT:?}");
            if wr.write_all(&head[sent..=sent]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(20 * MS).await;
        }
        let (out, took) = reader.await.unwrap();
        assert!(out.is_empty(), "no answer to an unfinished head: {out:?}");
        assert!(sent < head.len(), "dropped before the head was complete ({sent} of {} bytes)", head.len());
        assert!(
            took >= HANDSHAKE - 50 * MS && took < HANDSHAKE + 500 * MS,
            "dropped at the deadline: {took:?}"
        );
        gw.expect("clientmq_handshakes_timed_out_total", 1.0).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let mut too_many_headers = "GET /ws HTTP/1.1\r\n".to_owned();
        for i in 0..60 {
            too_many_headers.push_str(&format!("X-{i}: y\r\n"));
        }
        too_many_headers.push_str("\r\n");
        let cases: [&[u8]; 5] = [
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"GET /ws\r\n\r\n",
            b"GET /ws HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nBad Header: x\r\n\r\n",
            too_many_headers.as_bytes(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (status, answer) = http(gw.addr, case).await;
            assert_eq!(status, 400, "case {i}: {answer}");
        }
        gw.expect("clientmq_http_responses_total{status=\"400\"}", cases.len() as f64).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_head_gets_431() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        // Exactly the bound, without an end: the server reads it all, then refuses.
        let mut head = b"GET /ws HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(clientmq_server::http::MAX_HEAD, b'a');
        let (status, answer) = http(gw.addr, &head).await;
        assert_eq!(status, 431, "{answer}");
        gw.expect("clientmq_http_responses_total{status=\"431\"}", 1.0).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_key_or_upgrade_headers_or_get_get_400() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let cases = [
            upgrade_head("GET", "/ws", &["Sec-WebSocket-Key"], ""),
            upgrade_head("GET", "/ws", &["Upgrade"], ""),
            upgrade_head("GET", "/ws", &["Connection"], ""),
            upgrade_head("POST", "/ws", &[], "Content-Length: 0\r\n"),
            upgrade_head("PUT", "/ws", &[], "Content-Length: 0\r\n"),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (status, answer) = http(gw.addr, case).await;
            assert_eq!(status, 400, "case {i}: {answer}");
        }
        gw.expect("clientmq_http_responses_total{status=\"400\"}", cases.len() as f64).await;
        gw.expect("clientmq_connections_total", 0.0).await;
        gw.still_serves(0).await;
    })
    .await
}

/// RFC 6455 §4.2.2: a version the server does not speak is refused with an HTTP error (426 is
/// the example) AND a `Sec-WebSocket-Version` header naming the versions it does speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_websocket_version_is_refused_426_naming_version_13() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let wrong = upgrade_head("GET", "/ws", &["Sec-WebSocket-Version"], "Sec-WebSocket-Version: 8\r\n");
        let missing = upgrade_head("GET", "/ws", &["Sec-WebSocket-Version"], "");
        for head in [wrong, missing] {
            let (status, answer) = http(gw.addr, &head).await;
            assert_eq!(status, 426, "refused: {answer}");
            let names_13 =
                answer.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "sec-websocket-version:13");
            assert!(
                names_13,
                "the refusal names the version the server speaks (RFC 6455 §4.2.2): {answer:?}"
            );
        }
        gw.expect("clientmq_http_responses_total{status=\"426\"}", 2.0).await;
        gw.expect("clientmq_connections_total", 0.0).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_non_get_endpoints_get_404() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let cases = [
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            upgrade_head("GET", "/chat", &[], ""),
            upgrade_head("GET", "/ws/../metrics", &[], ""),
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (status, answer) = http(gw.addr, case).await;
            assert_eq!(status, 404, "case {i}: {answer}");
        }
        gw.expect("clientmq_http_responses_total{status=\"404\"}", cases.len() as f64).await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_origin_gets_403() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
        let cases = [
            upgrade_head("GET", "/ws", &[], "Origin: https://evil.example\r\n"),
            upgrade_head("GET", "/ws", &[], "Origin: https://app.example.evil\r\n"),
            upgrade_head("GET", "/ws", &[], ""),
        ];
        for (i, case) in cases.iter().enumerate() {
            let (status, answer) = http(gw.addr, case).await;
            assert_eq!(status, 403, "case {i}: {answer}");
        }
        gw.expect("clientmq_http_responses_total{status=\"403\"}", cases.len() as f64).await;
        // The allowed origin is served.
        let mut ok = Raw::upgrade(gw.tcp().await, &[("Origin", "https://app.example")]).await;
        assert_eq!(ok.call("mq.PingPong", vec![8, 1]).await.r#type, "mq.PingPongResponse");
        ok.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_limit_are_dropped_at_accept() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.max_handshakes = 2).await;
        let mut silent = [gw.tcp().await, gw.tcp().await];
        // Let the accept loop take both: each holds a handshake place until its timeout.
        tokio::time::sleep(100 * MS).await;
        let mut third = gw.tcp().await;
        let (out, took) = drained(&mut third).await;
        assert!(out.is_empty(), "{out:?}");
        assert!(took < HANDSHAKE / 2, "dropped at accept, not at the timeout ({took:?})");
        gw.expect("clientmq_handshakes_refused_total", 1.0).await;
        // The silent two time out and give their places back.
        for s in &mut silent {
            drained(s).await;
        }
        gw.still_serves(0).await;
        gw.expect("clientmq_handshakes_refused_total", 1.0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_while_draining_gets_503() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.gateway.close_timeout = WAIT).await;
        // A client that never answers the drain's close keeps the server draining meanwhile.
        let mut stubborn = gw.raw().await;
        gw.settles(1).await;
        gw.server.drain().await;
        let (status, answer) = http(gw.addr, &upgrade_head("GET", "/ws", &[], "")).await;
        assert_eq!(status, 503, "{answer}");
        let (status, _) = http(gw.addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 503);
        gw.expect("clientmq_http_responses_total{status=\"503\"}", 2.0).await;
        gw.expect("clientmq_connections_total", 1.0).await;
        let (status, _) = http(gw.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200, "still alive");
        // The stubborn client gets its 3333 and, answering it, leaves: the count is exact.
        assert_eq!(stubborn.ending().await.code(), Some(3333));
        gw.settles(0).await;
    })
    .await
}
