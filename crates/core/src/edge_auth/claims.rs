//! The claims of a verified digest token, read the way `phenix-edge-auth` writes them.

use std::fmt;

use serde_json::{Map, Number, Value};

use super::TokenRefusal;

/// The claims of a digest token that verified, as signed: no value is trimmed or normalised.
/// Which of them to enforce (the remote address, the session, the room or channel) is the
/// caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The application whose secret signed the token (from the envelope, bound by the key).
    pub application_id: String,
    /// `expires`, in ms since the epoch: a fractional value rounded up, a negative one as 0, one
    /// beyond `u64` as `u64::MAX`. A token is valid while `now_ms < expires_ms`.
    pub expires_ms: u64,
    /// `type`: what the token may be used for.
    pub token_type: TokenType,
    /// `sessionId`: the only session the token may authenticate.
    pub session_id: Option<String>,
    /// `remoteAddress`: the only client address the token may be used from.
    pub remote_address: Option<String>,
    /// `originStreamId`: the only origin stream the token gives access to.
    pub origin_stream_id: Option<String>,
    /// `requiredTag`: the room, channel or tag the token is limited to.
    pub required_tag: Option<RequiredTag>,
    /// `capabilities`, in order.
    pub capabilities: Vec<String>,
    /// `applyTags`: tags to put on a stream the token sets up, in order.
    pub apply_tags: Vec<String>,
    /// The signed claims JSON exactly as signed, to forward to workers as a verified fact. It may
    /// hold claims this version does not know.
    pub raw: String,
}

/// The `type` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// No `type` claim: the token is not limited to one use, and authenticates.
    Unrestricted,
    /// `"auth"` (`forAuthenticateOnly`): authentication only.
    Auth,
    /// `"stream"` (`forStreamingOnly`): subscribing to streams only.
    Stream,
    /// `"publish"` (`forPublishingOnly`): publishing only.
    Publish,
    /// Any other string, which the package's builder cannot write. Never authenticates.
    Other,
}

impl TokenType {
    fn from_claim(value: &str) -> Self {
        match value {
            "auth" => TokenType::Auth,
            "stream" => TokenType::Stream,
            "publish" => TokenType::Publish,
            _ => TokenType::Other,
        }
    }

    /// Whether a token of this type may authenticate a session: unrestricted and `auth` ones.
    pub fn allows_authentication(self) -> bool {
        matches!(self, TokenType::Unrestricted | TokenType::Auth)
    }

    /// `unrestricted`, `auth`, `stream`, `publish` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Unrestricted => "unrestricted",
            TokenType::Auth => "auth",
            TokenType::Stream => "stream",
            TokenType::Publish => "publish",
            TokenType::Other => "other",
        }
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `requiredTag` claim, split by the prefixes the builder's `forRoom`, `forRoomAlias`,
/// `forChannel` and `forChannelAlias` write. `forTag("roomId:x")` and `forRoom("x")` write the
/// same claim, so they read the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequiredTag {
    /// `roomId:<id>`
    RoomId(String),
    /// `roomAlias:<alias>`
    RoomAlias(String),
    /// `channelId:<id>`
    ChannelId(String),
    /// `channelAlias:<alias>`
    ChannelAlias(String),
    /// Any other tag, whole.
    Tag(String),
}

impl RequiredTag {
    /// Splits a `requiredTag` value at its first `:`.
    pub fn parse(tag: &str) -> Self {
        let whole = || RequiredTag::Tag(tag.to_owned());
        let Some((kind, value)) = tag.split_once(':') else { return whole() };
        let value = value.to_owned();
        match kind {
            "roomId" => RequiredTag::RoomId(value),
            "roomAlias" => RequiredTag::RoomAlias(value),
            "channelId" => RequiredTag::ChannelId(value),
            "channelAlias" => RequiredTag::ChannelAlias(value),
            _ => whole(),
        }
    }

    /// The claim's value, whole, as signed.
    pub fn to_tag(&self) -> String {
        match self {
            RequiredTag::RoomId(id) => format!("roomId:{id}"),
            RequiredTag::RoomAlias(alias) => format!("roomAlias:{alias}"),
            RequiredTag::ChannelId(id) => format!("channelId:{id}"),
            RequiredTag::ChannelAlias(alias) => format!("channelAlias:{alias}"),
            RequiredTag::Tag(tag) => tag.clone(),
        }
    }
}

impl Claims {
    /// Reads claims a gateway already verified (forwarded to a worker): the same reading as
    /// verification, without the digest, the expiry or the type, which were the gateway's to check.
    pub fn from_verified(application_id: &str, raw: &str) -> Result<Claims, TokenRefusal> {
        parse(application_id, raw)
    }
}

/// Reads the signed claims. Any claim of the wrong JSON type is refused rather than ignored: the
/// digest verified, so the signer wrote it, and a claim a gateway cannot read is a claim it cannot
/// enforce. `null` is a wrong type too (the builder never writes one).
pub(super) fn parse(application_id: &str, raw: &str) -> Result<Claims, TokenRefusal> {
    let claims = match serde_json::from_str(raw) {
        Ok(Value::Object(claims)) => claims,
        _ => return Err(bad("json")),
    };
    // The package refuses to sign one and overwrites it when decoding: a forwarded copy of the
    // raw claims must not name another application than the one that signed it.
    if claims.contains_key("applicationId") {
        return Err(bad("applicationId"));
    }
    let expires_ms = match claims.get("expires") {
        Some(Value::Number(expires)) => expires_to_ms(expires),
        _ => return Err(bad("expires")),
    };
    let token_type = match claims.get("type") {
        None => TokenType::Unrestricted,
        Some(Value::String(value)) => TokenType::from_claim(value),
        Some(_) => return Err(bad("type")),
    };
    Ok(Claims {
        application_id: application_id.to_owned(),
        expires_ms,
        token_type,
        session_id: string(&claims, "sessionId")?,
        remote_address: string(&claims, "remoteAddress")?,
        origin_stream_id: string(&claims, "originStreamId")?,
        required_tag: string(&claims, "requiredTag")?.as_deref().map(RequiredTag::parse),
        capabilities: strings(&claims, "capabilities")?,
        apply_tags: strings(&claims, "applyTags")?,
        raw: raw.to_owned(),
    })
}

fn bad(claim: &'static str) -> TokenRefusal {
    TokenRefusal::BadClaims { claim }
}

/// Rounding up keeps `now_ms < expires_ms` exact for a fractional `expires` and a whole `now_ms`.
fn expires_to_ms(expires: &Number) -> u64 {
    if let Some(ms) = expires.as_u64() {
        return ms;
    }
    // `as` saturates: a negative time is 0, beyond u64::MAX is u64::MAX.
    expires.as_f64().map_or(0, |ms| ms.ceil() as u64)
}

fn string(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, TokenRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(bad(name)),
    }
}

fn strings(claims: &Map<String, Value>, name: &'static str) -> Result<Vec<String>, TokenRefusal> {
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| match value {
                Value::String(value) => Ok(value.clone()),
                _ => Err(bad(name)),
            })
            .collect(),
        Some(_) => Err(bad(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_rounds_up_and_saturates() {
        let ms = |json: &str| expires_to_ms(&serde_json::from_str::<Number>(json).unwrap());
        assert_eq!(ms("1000"), 1000);
        assert_eq!(ms("1000.5"), 1001);
        assert_eq!(ms("1e3"), 1000);
        assert_eq!(ms("-5"), 0);
        assert_eq!(ms("-0.5"), 0);
        assert_eq!(ms("1e300"), u64::MAX);
        assert_eq!(ms("18446744073709551615"), u64::MAX);
    }

    #[test]
    fn required_tags_round_trip() {
        for tag in
            ["roomId:r.1", "roomAlias:a", "channelId:us#app#c.1", "channelAlias:", "my-tag=x", "room:x"]
        {
            assert_eq!(RequiredTag::parse(tag).to_tag(), tag);
        }
        assert_eq!(RequiredTag::parse("roomId:r.1"), RequiredTag::RoomId("r.1".into()));
        assert_eq!(RequiredTag::parse("roomid:r.1"), RequiredTag::Tag("roomid:r.1".into()));
    }

    #[test]
    fn only_unrestricted_and_auth_authenticate() {
        let allowed: Vec<_> = [
            TokenType::Unrestricted,
            TokenType::Auth,
            TokenType::Stream,
            TokenType::Publish,
            TokenType::Other,
        ]
        .into_iter()
        .filter(|t| t.allows_authentication())
        .collect();
        assert_eq!(allowed, [TokenType::Unrestricted, TokenType::Auth]);
    }
}
