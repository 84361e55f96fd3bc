//! TLS on the one port: the unmodified SDK connects over `wss://` (`interop/tls.js`) to the server
//! binary started with a certificate made here; plain HTTP to that port is dropped and counted.

mod common;

use std::path::Path;
use std::time::Duration;

use clientmq_testkit::node::{node_harness, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, wait_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tls-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_connects_over_wss_and_plain_http_to_the_tls_port_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let dir = tempdir("clientmq-tls-test");
        let cert =
            rcgen::generate_simple_self_signed(["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

        let log = Log::default();
        let port = free_port();
        let args = [
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--tokens".into(),
            TOKEN.into(),
            "--tls-cert".into(),
            cert_path.display().to_string(),
            "--tls-key".into(),
            key_path.display().to_string(),
        ];
        let server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_listening(port, "the TLS server").await;

        // Plain HTTP to the TLS port: no answer, the socket is dropped (the harness checks it was
        // counted in clientmq_tls_handshakes_failed).
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "dropped, not left hanging");
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"), "no plain answer on a TLS port");

        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop");
        npm_ci(&interop, "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let (port, ca) = (port.to_string(), cert_path.display().to_string());
        let env = [
            ("CLIENTMQ_PORT", port.as_str()),
            ("CLIENTMQ_TOKEN", TOKEN),
            ("NODE_EXTRA_CA_CERTS", ca.as_str()),
        ];
        let transcript = node_harness("tls.js", &interop, &env, Duration::from_secs(60), &log).await;
        assert!(transcript.contains("ok - tls harness passed"), "{transcript}");
        server.terminate(Duration::from_secs(15)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
