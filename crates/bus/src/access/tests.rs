use std::path::PathBuf;

use super::*;

const SECRET: &str = "s3cret-never-shown";

fn args(nats: &str) -> NatsArgs {
    NatsArgs { nats: Some(nats.into()), ..Default::default() }
}

fn access(a: NatsArgs) -> Access {
    a.access().expect("valid").expect("--nats given")
}

/// A file in a fresh temporary directory.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clientmq-access-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[test]
fn credentials_in_the_url_leave_it_and_are_used() {
    let a = access(args(&format!("nats://gwu:{SECRET}@127.0.0.1:4222, tls://gwu:{SECRET}@10.0.0.2:4222")));
    assert_eq!(a.servers(), ["nats://127.0.0.1:4222", "tls://10.0.0.2:4222"]);
    assert_eq!(a.method(), "user and password");
    let auth = a.auth(b"nonce").unwrap();
    assert_eq!((auth.username.as_deref(), auth.password.as_deref()), (Some("gwu"), Some(SECRET)));
    let t = access(args(&format!("nats://{SECRET}@localhost:4222")));
    assert_eq!((t.servers()[0].as_str(), t.method()), ("nats://localhost:4222", "token"));
    assert_eq!(t.auth(b"").unwrap().token.as_deref(), Some(SECRET));
    assert!(!format!("{a:?}{t:?}").contains(SECRET));
}

#[test]
fn the_user_part_of_a_url_is_percent_decoded() {
    let a = access(args("nats://gw%2B1:p%40ss%3Aw0rd%25@127.0.0.1:4222"));
    let auth = a.auth(b"").unwrap();
    assert_eq!((auth.username.as_deref(), auth.password.as_deref()), (Some("gw+1"), Some("p@ss:w0rd%")));
    for bad in ["nats://u:p%4@h:1", "nats://u:p%zz@h:1", "nats://u:%ff%fe@h:1"] {
        let e = args(bad).access().expect_err(bad);
        assert!(
            matches!(e, AccessError::BadUrl(ref shown) if shown.starts_with("nats://<credentials>@")),
            "{e}"
        );
    }
}

#[test]
fn no_nats_is_none_and_plain_urls_need_nothing() {
    assert!(NatsArgs::default().access().unwrap().is_none());
    let a = access(args("nats://127.0.0.1:4222"));
    assert_eq!(a.method(), "none");
    let auth = a.auth(b"x").unwrap();
    assert!(auth.username.is_none() && auth.token.is_none() && auth.jwt.is_none() && auth.nkey.is_none());
}

#[test]
fn an_nkey_seed_signs_the_servers_nonce() {
    let key = nkeys::KeyPair::new_user();
    let path = file("user.nk", &format!("{}\n", key.seed().unwrap()));
    let a = access(NatsArgs { nats_nkey: Some(path), ..args("nats://127.0.0.1:4222") });
    assert_eq!(a.method(), "nkey");
    let auth = a.auth(b"the-nonce").unwrap();
    assert_eq!(auth.nkey, Some(key.public_key()));
    key.verify(b"the-nonce", &auth.signature.unwrap()).expect("signed with the seed's key");
}

#[test]
fn a_creds_file_gives_its_jwt_and_signs_with_its_seed() {
    let key = nkeys::KeyPair::new_user();
    let path = file("user.creds", &creds("aaa.bbb.ccc", &key.seed().unwrap()));
    let a = access(NatsArgs { nats_creds: Some(path), ..args("nats://127.0.0.1:4222") });
    let auth = a.auth(b"n").unwrap();
    assert_eq!(auth.jwt.as_deref(), Some("aaa.bbb.ccc"));
    key.verify(b"n", &auth.signature.unwrap()).unwrap();
}

#[test]
fn a_reload_takes_the_new_file_and_a_broken_one_keeps_the_old() {
    let path = file("password", "first\n");
    let a = access(NatsArgs {
        nats_user: Some("w".into()),
        nats_password_file: Some(path.clone()),
        ..args("nats://127.0.0.1:4222")
    });
    assert_eq!(a.auth(b"").unwrap().password.as_deref(), Some("first"));
    std::fs::write(&path, "second").unwrap();
    a.reload().unwrap();
    assert_eq!(a.auth(b"").unwrap().password.as_deref(), Some("second"));
    std::fs::write(&path, "").unwrap();
    assert!(matches!(a.reload(), Err(AccessError::Invalid { what: "not one line", .. })));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(a.reload(), Err(AccessError::Unreadable { .. })));
    assert_eq!(a.auth(b"").unwrap().password.as_deref(), Some("second"), "kept");
}

#[test]
fn wrong_combinations_are_refused_by_name() {
    let nkey = file("k.nk", &nkeys::KeyPair::new_user().seed().unwrap());
    let base = || args("nats://127.0.0.1:4222");
    let cases = [
        (
            NatsArgs { nats_token: Some(SECRET.into()), nats_nkey: Some(nkey.clone()), ..base() },
            "token, --nats-nkey",
        ),
        (NatsArgs { nats_user: Some("u".into()), ..base() }, "needs a password"),
        (NatsArgs { nats_password: Some(SECRET.into()), ..base() }, "needs --nats-user"),
        (NatsArgs { nats_cert: Some(nkey.clone()), ..base() }, "go together"),
        (NatsArgs { nats_ca: Some(nkey.clone()), ..base() }, "no PEM certificate"),
        (
            NatsArgs { nats_token: Some(SECRET.into()), ..args(&format!("nats://u:{SECRET}@h:1")) },
            "credentials in --nats, token",
        ),
        (args(&format!("nats://a:{SECRET}@h:1,nats://b:{SECRET}@h:2")), "different credentials"),
        (args(&format!("http://u:{SECRET}@h:1")), "not a nats://"),
        (args(" , "), "no server"),
        (NatsArgs { nats_nkey: Some(file("bad.nk", SECRET)), ..base() }, "no user NKey seed"),
        (NatsArgs { nats_creds: Some(file("bad.creds", &creds(SECRET, SECRET))), ..base() }, "no user JWT"),
        (NatsArgs { nats_creds: Some(PathBuf::from("/nonexistent/x.creds")), ..base() }, "cannot read"),
    ];
    for (a, says) in cases {
        let e = a.access().expect_err(says);
        let shown = format!("{e} {e:?}");
        assert!(shown.contains(says), "{shown}");
        assert!(!shown.contains(SECRET), "a secret in {shown}");
    }
}

#[test]
fn redact_hides_any_user_part() {
    assert_eq!(redact(&format!("nats://u:{SECRET}@h:4222")), "nats://<credentials>@h:4222");
    assert_eq!(redact(&format!("tls://{SECRET}@h:4222/x")), "tls://<credentials>@h:4222/x");
    assert_eq!(redact("nats://h:4222"), "nats://h:4222");
}
