//! How a process reaches NATS: its servers, its credentials (user and password, a token, an
//! NKey seed file or a `.creds` file) and TLS, from flags or the environment. No secret ever
//! reaches a log line, `--help` or an error message: URLs are shown without their user part,
//! and errors name the flag and the file, never what is in it.
//!
//! Credentials are loaded at start and again on [`Access::reload`] (SIGHUP): the connection in
//! place keeps going (NATS checks credentials when a connection is made), the next one uses
//! what was loaded last. A reload that fails keeps the credentials it had. The TLS files are
//! read again by the client at every connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The flags (and variables) every clientmq process that uses NATS takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS servers, comma-separated (nats://HOST:PORT, or tls://HOST:PORT). User and password
    /// (nats://USER:PASSWORD@HOST:PORT) or a token (nats://TOKEN@HOST:PORT) may be given here.
    #[arg(long = "nats", env = "CLIENTMQ_NATS", hide_env_values = true)]
    pub nats: Option<String>,
    /// NATS user; its password comes from --nats-password or --nats-password-file.
    #[arg(long, env = "CLIENTMQ_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (a flag shows in the process list: prefer the file or the variable).
    #[arg(long, env = "CLIENTMQ_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// File holding the NATS password (read at start and on SIGHUP).
    #[arg(long, env = "CLIENTMQ_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// NATS token.
    #[arg(long, env = "CLIENTMQ_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// File holding the NATS token (read at start and on SIGHUP).
    #[arg(long, env = "CLIENTMQ_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// File holding an NKey seed (SU...) the client proves its identity with.
    #[arg(long, env = "CLIENTMQ_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// A `.creds` file: a user JWT and its NKey seed (decentralized authentication).
    #[arg(long, env = "CLIENTMQ_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the certificate authorities NATS servers are checked against; TLS is then
    /// required.
    #[arg(long, env = "CLIENTMQ_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// PEM certificate this client presents to NATS (with --nats-key); TLS is then required.
    #[arg(long, env = "CLIENTMQ_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// PEM private key of --nats-cert.
    #[arg(long, env = "CLIENTMQ_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
}

/// Why the NATS settings cannot be used. Names flags and files, never a secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("--nats (CLIENTMQ_NATS): no server given")]
    NoServer,
    #[error("--nats (CLIENTMQ_NATS): `{0}` is not a nats://, tls://, ws:// or wss:// URL")]
    BadUrl(String),
    #[error("--nats (CLIENTMQ_NATS): the servers carry different credentials")]
    MixedUrlCredentials,
    #[error("NATS credentials: give one of user and password, token, --nats-nkey or --nats-creds ({0})")]
    Conflict(String),
    #[error("--nats-user (CLIENTMQ_NATS_USER) needs a password (--nats-password or --nats-password-file)")]
    UserWithoutPassword,
    #[error("--nats-password needs --nats-user")]
    PasswordWithoutUser,
    #[error("--nats-cert (CLIENTMQ_NATS_CERT) and --nats-key (CLIENTMQ_NATS_KEY) go together")]
    CertWithoutKey,
    #[error("{flag}: cannot read {}: {error}", path.display())]
    Unreadable { flag: &'static str, path: PathBuf, error: String },
    #[error("{flag}: {} holds {what}", path.display())]
    Invalid { flag: &'static str, path: PathBuf, what: &'static str },
}

/// Where the credentials come from.
#[derive(Clone, PartialEq, Eq)]
enum Source {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// A file read at start and on reload: (flag, path).
    File {
        kind: FileKind,
        user: Option<String>,
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Password,
    Token,
    NKey,
    Creds,
}

impl FileKind {
    fn flag(self) -> &'static str {
        match self {
            FileKind::Password => "--nats-password-file (CLIENTMQ_NATS_PASSWORD_FILE)",
            FileKind::Token => "--nats-token-file (CLIENTMQ_NATS_TOKEN_FILE)",
            FileKind::NKey => "--nats-nkey (CLIENTMQ_NATS_NKEY)",
            FileKind::Creds => "--nats-creds (CLIENTMQ_NATS_CREDS)",
        }
    }
}

/// A string that never prints.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// Credentials as loaded.
enum Loaded {
    None,
    UserPassword { user: String, password: String },
    Token(String),
    NKey(nkeys::KeyPair),
    Creds { jwt: String, key: nkeys::KeyPair },
}

/// The TLS files given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// What [`NatsArgs`] say, checked: servers without credentials in them, the credentials'
/// source and what was last loaded from it, and the TLS files.
#[derive(Clone)]
pub struct Access {
    servers: Vec<String>,
    source: Source,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("servers", &self.servers).field("auth", &self.method()).finish()
    }
}

impl NatsArgs {
    /// The checked settings, with the credentials loaded; `None` without `--nats`.
    pub fn access(&self) -> Result<Option<Access>, AccessError> {
        let Some(nats) = &self.nats else { return Ok(None) };
        let mut servers = Vec::new();
        let mut in_url: Option<(Option<String>, Secret)> = None;
        for url in nats.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (clean, creds) = split_userinfo(url)?;
            if let Some(creds) = creds {
                if in_url.as_ref().is_some_and(|seen| *seen != creds) {
                    return Err(AccessError::MixedUrlCredentials);
                }
                in_url = Some(creds);
            }
            servers.push(clean);
        }
        if servers.is_empty() {
            return Err(AccessError::NoServer);
        }
        let mut given = Vec::new();
        let a = self;
        if in_url.is_some() {
            given.push("credentials in --nats");
        }
        if a.nats_user.is_some() || a.nats_password.is_some() || a.nats_password_file.is_some() {
            given.push("user and password");
        }
        if a.nats_token.is_some() || a.nats_token_file.is_some() {
            given.push("token");
        }
        if a.nats_nkey.is_some() {
            given.push("--nats-nkey");
        }
        if a.nats_creds.is_some() {
            given.push("--nats-creds");
        }
        if given.len() > 1 || a.nats_password.is_some() && a.nats_password_file.is_some() {
            return Err(AccessError::Conflict(given.join(", ")));
        }
        if a.nats_token.is_some() && a.nats_token_file.is_some() {
            return Err(AccessError::Conflict("--nats-token and --nats-token-file".into()));
        }
        let file = |kind, user: Option<&String>, path: &PathBuf| Source::File {
            kind,
            user: user.cloned(),
            path: path.clone(),
        };
        let source = match (in_url, &a.nats_user) {
            (Some((Some(user), password)), _) => Source::UserPassword { user, password },
            (Some((None, token)), _) => Source::Token(token),
            (None, Some(user)) => match (&a.nats_password, &a.nats_password_file) {
                (Some(p), _) => Source::UserPassword { user: user.clone(), password: Secret(p.clone()) },
                (None, Some(path)) => file(FileKind::Password, Some(user), path),
                (None, None) => return Err(AccessError::UserWithoutPassword),
            },
            (None, None) if a.nats_password.is_some() || a.nats_password_file.is_some() => {
                return Err(AccessError::PasswordWithoutUser);
            }
            (None, None) => match (&a.nats_token, &a.nats_token_file, &a.nats_nkey, &a.nats_creds) {
                (Some(t), ..) => Source::Token(Secret(t.clone())),
                (_, Some(path), ..) => file(FileKind::Token, None, path),
                (_, _, Some(path), _) => file(FileKind::NKey, None, path),
                (_, _, _, Some(path)) => file(FileKind::Creds, None, path),
                _ => Source::None,
            },
        };
        let tls = match (&a.nats_ca, &a.nats_cert, &a.nats_key) {
            (None, None, None) => None,
            (ca, Some(cert), Some(key)) => {
                Some(TlsFiles { ca: ca.clone(), cert_and_key: Some((cert.clone(), key.clone())) })
            }
            (ca, None, None) => Some(TlsFiles { ca: ca.clone(), cert_and_key: None }),
            _ => return Err(AccessError::CertWithoutKey),
        };
        if let Some(tls) = &tls {
            tls.check()?;
        }
        let loaded = Arc::new(RwLock::new(Arc::new(source.load()?)));
        Ok(Some(Access { servers, source, loaded, tls }))
    }
}

impl TlsFiles {
    /// Reads each file once, so a missing or empty one is an error now rather than at every
    /// connection attempt.
    fn check(&self) -> Result<(), AccessError> {
        let mut files = Vec::new();
        if let Some(ca) = &self.ca {
            files.push(("--nats-ca (CLIENTMQ_NATS_CA)", ca, "no PEM certificate"));
        }
        if let Some((cert, key)) = &self.cert_and_key {
            files.push(("--nats-cert (CLIENTMQ_NATS_CERT)", cert, "no PEM certificate"));
            files.push(("--nats-key (CLIENTMQ_NATS_KEY)", key, "no PEM private key"));
        }
        for (flag, path, what) in files {
            let text = read(flag, path)?;
            if !text.contains("-----BEGIN ") {
                return Err(AccessError::Invalid { flag, path: path.clone(), what });
            }
        }
        Ok(())
    }
}

impl Access {
    /// Servers as given, without the credentials (for the client and for logs).
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// How this process authenticates, for logs: a method, never a secret.
    pub fn method(&self) -> &'static str {
        match &self.source {
            Source::None => "none",
            Source::UserPassword { .. } | Source::File { kind: FileKind::Password, .. } => {
                "user and password"
            }
            Source::Token(_) | Source::File { kind: FileKind::Token, .. } => "token",
            Source::File { kind: FileKind::NKey, .. } => "nkey",
            Source::File { kind: FileKind::Creds, .. } => "creds",
        }
    }

    /// Loads the credentials again (SIGHUP); on an error the ones loaded before stay.
    pub fn reload(&self) -> Result<(), AccessError> {
        if let Some(tls) = &self.tls {
            tls.check()?;
        }
        let loaded = self.source.load()?;
        *self.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(())
    }

    /// [`Access::reload`] on SIGHUP, its outcome logged; whether it took.
    pub fn reload_logged(&self) -> bool {
        match self.reload() {
            Ok(()) => {
                let auth = self.method();
                tracing::info!(
                    auth,
                    "SIGHUP: NATS credentials reloaded; the next connection to NATS uses them"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: NATS credentials not reloaded; the previous ones stay");
                false
            }
        }
    }

    /// The client's answer to a server's challenge: the credentials last loaded, the nonce
    /// signed where an NKey is involved.
    pub(crate) fn auth(&self, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
        let loaded = self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut auth = async_nats::Auth::new();
        let sign =
            |key: &nkeys::KeyPair| key.sign(nonce).map_err(|e| async_nats::AuthError::new(e.to_string()));
        match &*loaded {
            Loaded::None => {}
            Loaded::UserPassword { user, password } => {
                auth.username = Some(user.clone());
                auth.password = Some(password.clone());
            }
            Loaded::Token(token) => auth.token = Some(token.clone()),
            Loaded::NKey(key) => {
                auth.nkey = Some(key.public_key());
                auth.signature = Some(sign(key)?);
            }
            Loaded::Creds { jwt, key } => {
                auth.jwt = Some(jwt.clone());
                auth.signature = Some(sign(key)?);
            }
        }
        Ok(auth)
    }
}

impl Source {
    fn load(&self) -> Result<Loaded, AccessError> {
        let Source::File { kind, user, path } = self else {
            return Ok(match self {
                Source::UserPassword { user, password } => {
                    Loaded::UserPassword { user: user.clone(), password: password.0.clone() }
                }
                Source::Token(token) => Loaded::Token(token.0.clone()),
                _ => Loaded::None,
            });
        };
        let (kind, flag) = (*kind, kind.flag());
        let text = read(flag, path)?;
        let invalid = |what| AccessError::Invalid { flag, path: path.clone(), what };
        let line = text.trim();
        Ok(match kind {
            FileKind::Password | FileKind::Token if line.is_empty() || line.contains('\n') => {
                return Err(invalid("not one line"));
            }
            FileKind::Password => {
                Loaded::UserPassword { user: user.clone().unwrap_or_default(), password: line.into() }
            }
            FileKind::Token => Loaded::Token(line.into()),
            FileKind::NKey => Loaded::NKey(seed(line).ok_or(invalid("no user NKey seed"))?),
            FileKind::Creds => {
                let (jwt, key) = parse_creds(&text).ok_or(invalid("no user JWT and NKey seed"))?;
                Loaded::Creds { jwt, key }
            }
        })
    }
}

fn read(flag: &'static str, path: &Path) -> Result<String, AccessError> {
    std::fs::read_to_string(path).map_err(|e| AccessError::Unreadable {
        flag,
        path: path.to_owned(),
        error: e.kind().to_string(),
    })
}

/// A user's NKey pair from its seed (`SU...`).
fn seed(text: &str) -> Option<nkeys::KeyPair> {
    nkeys::KeyPair::from_seed(text.trim()).ok().filter(|k| k.public_key().starts_with('U'))
}

/// The user JWT and NKey seed of a `.creds` file: the first and second blocks between the
/// `-----BEGIN ...-----` and `------END ...------` lines.
fn parse_creds(text: &str) -> Option<(String, nkeys::KeyPair)> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("---") && line.contains("BEGIN") {
            current = Some(String::new());
        } else if line.starts_with("---") && line.contains("END") {
            blocks.extend(current.take());
        } else if let Some(block) = &mut current {
            block.push_str(line);
        }
    }
    let [jwt, key, ..] = &blocks[..] else { return None };
    Some((jwt.clone(), seed(key)?)).filter(|(jwt, _)| jwt.split('.').count() == 3)
}

/// `scheme://[userinfo@]host[:port]` split into the URL without its user part and what the
/// user part said: `(Some(user), password)` or `(None, token)`.
#[allow(clippy::type_complexity)]
fn split_userinfo(url: &str) -> Result<(String, Option<(Option<String>, Secret)>), AccessError> {
    let bad = || AccessError::BadUrl(redact(url));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if !["nats", "tls", "ws", "wss"].contains(&scheme) {
        return Err(bad());
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return Ok((url.to_owned(), None)) };
    if host.is_empty() {
        return Err(bad());
    }
    let clean =
        if path.is_empty() { format!("{scheme}://{host}") } else { format!("{scheme}://{host}/{path}") };
    let creds = match userinfo.split_once(':') {
        Some((user, password)) => {
            (Some(percent_decoded(user).ok_or_else(bad)?), Secret(percent_decoded(password).ok_or_else(bad)?))
        }
        None => (None, Secret(percent_decoded(userinfo).ok_or_else(bad)?)),
    };
    Ok((clean, Some(creds)))
}

/// A URL's user part as meant: `%40` is `@`, and so on (RFC 3986); `None` when it is not UTF-8
/// or a `%` is not followed by two hex digits.
fn percent_decoded(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A URL as it may be shown: its user part, if any, replaced.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://<credentials>@{host}{}", &rest[authority_end..]),
                None => url.to_owned(),
            }
        }
        None if url.contains('@') => "<credentials>@...".to_owned(),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
