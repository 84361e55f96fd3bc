//! Authentication tokens, verified without I/O: Phenix EdgeAuth digest tokens ([`EdgeAuth`]) and
//! static tokens compared in constant time ([`StaticTokens`]).
//!
//! # The digest token format
//!
//! What the npm package `phenix-edge-auth` 1.2.4 (`TokenBuilder`, `DigestTokens`) mints:
//!
//! ```text
//! token    = "DIGEST:" base64( utf8( JSON {"applicationId": A, "digest": D, "token": C} ) )
//! C        = JSON.stringify(claims)            -- a JSON object, itself carried as a string
//! D        = base64( HMAC-SHA512( key = utf8(A ++ S), message = utf8(C) ) )
//! ```
//!
//! `S` is the application's secret. The key is the application id and the secret concatenated
//! with no separator, so the application id is bound by the key; nothing else of the envelope is
//! signed. Base64 is the standard alphabet with padding. The claims (all optional but `expires`):
//!
//! | claim | JSON | set by |
//! |---|---|---|
//! | `expires` | number, ms since the epoch | `expiresAt(date)`, `expiresInSeconds(s)` (required) |
//! | `type` | `"auth"`, `"stream"` or `"publish"` | `forAuthenticateOnly`, `forStreamingOnly`, `forPublishingOnly` |
//! | `capabilities` | array of strings | `withCapability(c)`, once per call |
//! | `sessionId` | string | `forSession(id)` |
//! | `remoteAddress` | string | `forRemoteAddress(addr)` |
//! | `originStreamId` | string | `forOriginStream(id)` |
//! | `requiredTag` | string: `roomId:…`, `roomAlias:…`, `channelId:…`, `channelAlias:…` or any tag | `forRoom`, `forRoomAlias`, `forChannel`, `forChannelAlias`, `forTag`: one claim, the last call wins |
//! | `applyTags` | array of strings | `applyTag(t)`, once per call |
//!
//! The package's own `verifyAndDecode(secret, token)` checks the digest only: it neither looks at
//! `expires` nor at `type`. [`EdgeAuth::verify`] also refuses expired tokens and tokens whose type
//! does not allow authentication (only an absent type, which restricts nothing, and `"auth"` do).
//!
//! `interop/edge-auth-vectors.js` mints the vectors of `tests/fixtures/edge-auth-vectors.json`
//! with the real package; `tests/edge_auth.rs` checks this module against them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha512;

mod claims;
mod static_tokens;

pub use claims::{Claims, RequiredTag, TokenType};
pub use static_tokens::StaticTokens;

/// What every digest token starts with (case-sensitive).
pub const DIGEST_PREFIX: &str = "DIGEST:";

/// Longest digest token [`EdgeAuth::verify`] decodes, in bytes. Minted tokens are a few hundred
/// bytes; this leaves room for many tags and capabilities.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The envelope's base64: standard alphabet; the padding the package writes may be left out.
const ENVELOPE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Whether `token` claims to be a digest token: it starts with `DIGEST:`, as the package's
/// `isDigestToken` decides. Nothing else is checked.
pub fn is_digest_token(token: &str) -> bool {
    token.starts_with(DIGEST_PREFIX)
}

/// Verifies Phenix EdgeAuth digest tokens against a table of application secrets.
///
/// Contract:
/// - Pure: no clock, no I/O; the caller passes the current time as `now_ms` (ms since the epoch).
/// - [`verify`](Self::verify) never panics, whatever the string, and returns [`Claims`] only when
///   the token decodes, names a known application, carries the digest of its claims under that
///   application's key (checked in constant time), has not expired (`now_ms < expires`), and its
///   type allows authentication. Otherwise a [`TokenRefusal`], whose
///   [`label`](TokenRefusal::label) is fit for a metric.
/// - No refusal and no `Debug` output holds the token, a string taken from it, or a secret.
/// - Each application's HMAC key (`applicationId` + secret) is expanded once, when the table is
///   built; the secret text is not kept, though the expanded state is as sensitive as the secret.
#[derive(Clone, Default)]
pub struct EdgeAuth {
    keys: BTreeMap<String, Hmac<Sha512>>,
}

/// Why a secret table could not be built. `line` is 1-based: a line of the text given to
/// [`EdgeAuth::parse`], or the position of the pair given to [`EdgeAuth::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretTableError {
    #[error("line {line}: expected `APPLICATION_ID SECRET`, found {fields} field(s)")]
    Malformed { line: usize, fields: usize },
    #[error("line {line}: an empty application id or secret")]
    Empty { line: usize },
    #[error("line {line}: application id `{application_id}` is already configured on line {first_line}")]
    Duplicate { line: usize, first_line: usize, application_id: String },
    #[error("line {line}: HMAC-SHA512 refused the key")]
    Key { line: usize },
}

impl EdgeAuth {
    /// A table from `(application id, secret)` pairs. Empty ids or secrets and duplicate ids are
    /// errors.
    pub fn new<I, A, S>(pairs: I) -> Result<Self, SecretTableError>
    where
        I: IntoIterator<Item = (A, S)>,
        A: AsRef<str>,
        S: AsRef<str>,
    {
        let mut table = Builder::default();
        for (index, (application_id, secret)) in pairs.into_iter().enumerate() {
            table.insert(index + 1, application_id.as_ref(), secret.as_ref())?;
        }
        Ok(table.finish())
    }

    /// A table from the text of a secrets file: one `APPLICATION_ID SECRET` a line, the two
    /// separated by whitespace. Blank lines and lines whose first non-blank character is `#` are
    /// skipped (a `#` later in a line is part of the secret). Neither field can hold whitespace.
    pub fn parse(text: &str) -> Result<Self, SecretTableError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut table = Builder::default();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some(application_id), Some(secret), None) => {
                    table.insert(line_number, application_id, secret)?
                }
                _ => {
                    let fields = trimmed.split_whitespace().count();
                    return Err(SecretTableError::Malformed { line: line_number, fields });
                }
            }
        }
        Ok(table.finish())
    }

    /// How many applications the table holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The application ids of the table, in order.
    pub fn application_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies `token` for authentication at `now_ms` (ms since the epoch). See the type's doc.
    ///
    /// Checks, in order: the `DIGEST:` prefix, the length bound, the envelope (base64 of a JSON
    /// object with non-empty string `applicationId`, `digest` and `token`; a key named twice
    /// counts by its last value, as with `JSON.parse`), the application, the digest, the claims,
    /// the type, the expiry.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, TokenRefusal> {
        let encoded = token.strip_prefix(DIGEST_PREFIX).ok_or(TokenRefusal::NotDigest)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenRefusal::TooLong { len: token.len(), max: MAX_TOKEN_LEN });
        }
        let bytes = ENVELOPE_BASE64.decode(encoded).map_err(|_| malformed("base64"))?;
        let envelope = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(envelope)) => envelope,
            _ => return Err(malformed("json")),
        };
        let application_id = envelope_field(&envelope, "applicationId")?;
        let digest = envelope_field(&envelope, "digest")?;
        let signed_claims = envelope_field(&envelope, "token")?;

        let key = self.keys.get(application_id).ok_or(TokenRefusal::UnknownApplication)?;
        // The package compares base64 strings; canonical padded base64 is one string per digest.
        let digest = STANDARD.decode(digest).map_err(|_| TokenRefusal::BadDigest)?;
        let mut mac = key.clone();
        mac.update(signed_claims.as_bytes());
        mac.verify_slice(&digest).map_err(|_| TokenRefusal::BadDigest)?;

        let claims = claims::parse(application_id, signed_claims)?;
        if !claims.token_type.allows_authentication() {
            return Err(TokenRefusal::WrongType { token_type: claims.token_type });
        }
        if claims.expires_ms <= now_ms {
            return Err(TokenRefusal::Expired { expires_ms: claims.expires_ms, now_ms });
        }
        Ok(claims)
    }
}

impl fmt::Debug for EdgeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeAuth").field("applications", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

/// Collects keys, remembering on which line each application came, for duplicate errors.
#[derive(Default)]
struct Builder {
    keys: BTreeMap<String, (usize, Hmac<Sha512>)>,
}

impl Builder {
    fn insert(&mut self, line: usize, application_id: &str, secret: &str) -> Result<(), SecretTableError> {
        if application_id.is_empty() || secret.is_empty() {
            return Err(SecretTableError::Empty { line });
        }
        match self.keys.entry(application_id.to_owned()) {
            Entry::Occupied(first) => Err(SecretTableError::Duplicate {
                line,
                first_line: first.get().0,
                application_id: application_id.to_owned(),
            }),
            Entry::Vacant(slot) => {
                let key = [application_id.as_bytes(), secret.as_bytes()].concat();
                // HMAC accepts keys of any length; the error is mapped, not unwrapped, all the same.
                let mac = Hmac::<Sha512>::new_from_slice(&key).map_err(|_| SecretTableError::Key { line })?;
                slot.insert((line, mac));
                Ok(())
            }
        }
    }

    fn finish(self) -> EdgeAuth {
        EdgeAuth { keys: self.keys.into_iter().map(|(id, (_, mac))| (id, mac)).collect() }
    }
}

fn malformed(part: &'static str) -> TokenRefusal {
    TokenRefusal::Malformed { part }
}

/// A non-empty string field of the envelope, as the package requires (`!x || typeof x !== 'string'`).
fn envelope_field<'a>(envelope: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, TokenRefusal> {
    match envelope.get(name) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        _ => Err(malformed(name)),
    }
}

/// Why [`EdgeAuth::verify`] refused a token. No message holds the token, a string taken from it,
/// or a secret: only static names, lengths, the token type and times.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// It does not start with `DIGEST:`: not a digest token at all.
    #[error("not a digest token: no `DIGEST:` prefix")]
    NotDigest,
    /// Longer than [`MAX_TOKEN_LEN`]; not decoded.
    #[error("digest token of {len} bytes is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    /// The envelope does not decode: `part` names what is wrong (`base64`, `json`, or the field
    /// `applicationId`, `digest` or `token` that is missing, empty or not a string).
    #[error("malformed digest token: bad {part}")]
    Malformed { part: &'static str },
    /// No secret is configured for the token's application.
    #[error("digest token of an application without a configured secret")]
    UnknownApplication,
    /// The digest is not the HMAC of the claims under the application's key.
    #[error("digest token whose digest does not verify")]
    BadDigest,
    /// The digest verifies but a claim is not what the package writes: `claim` names it (`json`
    /// when the claims are not a JSON object; `applicationId` when they carry one of their own).
    #[error("digest token with a malformed `{claim}` claim")]
    BadClaims { claim: &'static str },
    /// The token is limited to a use other than authentication.
    #[error("digest token of type `{token_type}` does not allow authentication")]
    WrongType { token_type: TokenType },
    /// `expires` is not after `now_ms`.
    #[error("digest token expired at {expires_ms} ms since the epoch (now {now_ms})")]
    Expired { expires_ms: u64, now_ms: u64 },
}

impl TokenRefusal {
    /// A stable short label per reason, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenRefusal::NotDigest => "not-digest",
            TokenRefusal::TooLong { .. } => "too-long",
            TokenRefusal::Malformed { .. } => "malformed",
            TokenRefusal::UnknownApplication => "unknown-application",
            TokenRefusal::BadDigest => "bad-digest",
            TokenRefusal::BadClaims { .. } => "bad-claims",
            TokenRefusal::WrongType { .. } => "wrong-type",
            TokenRefusal::Expired { .. } => "expired",
        }
    }

    /// Every label [`label`](Self::label) can return, e.g. to pre-register metric series.
    pub const LABELS: [&'static str; 8] = [
        "not-digest",
        "too-long",
        "malformed",
        "unknown-application",
        "bad-digest",
        "bad-claims",
        "wrong-type",
        "expired",
    ];
}
