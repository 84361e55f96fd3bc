//! Who may authenticate: every `pcast.Authenticate` is checked here, at the gateway, before a
//! backend sees it. Static tokens compare in constant time; EdgeAuth digest tokens are verified
//! (digest, application, expiry by the injected clock, type) and their claims enforced where the
//! gateway can (the client's address, the session it may resume, the room it may join) and passed
//! to the backend as verified facts.

use std::fmt;
use std::net::IpAddr;

use crate::edge_auth::{self, Claims, EdgeAuth, RequiredTag, StaticTokens, TokenRefusal};

/// The gateway's token policy.
#[derive(Clone, Default)]
pub enum TokenPolicy {
    /// Nobody (no token configured: the safe default).
    #[default]
    DenyAll,
    /// Any non-empty token (development only).
    AcceptAny,
    /// Static tokens, and digest tokens of the known applications.
    Check { tokens: StaticTokens, edge: EdgeAuth },
}

impl fmt::Debug for TokenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenPolicy::DenyAll => f.write_str("DenyAll"),
            TokenPolicy::AcceptAny => f.write_str("AcceptAny"),
            TokenPolicy::Check { tokens, edge } => {
                write!(f, "Check {{ {} static tokens, {} applications }}", tokens.len(), edge.len())
            }
        }
    }
}

/// Why an authentication was refused. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    /// No token is accepted here.
    Denied,
    /// Not a digest token and not one of the static tokens.
    UnknownToken,
    /// A digest token that does not verify.
    Edge(TokenRefusal),
    /// The token is bound to another client address.
    RemoteAddress,
    /// The token is bound to another session than the one asked for.
    Session,
    /// A join outside the room the token is limited to.
    Room,
}

impl Refusal {
    /// Stable label for metrics and traces.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::Denied => "denied",
            Refusal::UnknownToken => "unknown-token",
            Refusal::Edge(e) => e.label(),
            Refusal::RemoteAddress => "remote-address",
            Refusal::Session => "session",
            Refusal::Room => "room",
        }
    }
}

impl TokenPolicy {
    /// Checks an authentication of `remote` with `token`, asking for `session` (a resume), at
    /// `now_ms` since the epoch. `Ok(Some(claims))` for a verified digest token.
    pub fn check(
        &self,
        token: &str,
        remote: IpAddr,
        session: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Claims>, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Empty);
        }
        let (tokens, edge) = match self {
            TokenPolicy::DenyAll => return Err(Refusal::Denied),
            TokenPolicy::AcceptAny => return Ok(None),
            TokenPolicy::Check { tokens, edge } => (tokens, edge),
        };
        if !edge_auth::is_digest_token(token) {
            return if tokens.accepts(token) { Ok(None) } else { Err(Refusal::UnknownToken) };
        }
        let claims = edge.verify(token, now_ms).map_err(Refusal::Edge)?;
        if let Some(bound) = &claims.remote_address
            && bound.parse::<IpAddr>().ok().map(canonical) != Some(canonical(remote))
        {
            return Err(Refusal::RemoteAddress);
        }
        if let Some(bound) = &claims.session_id
            && session.filter(|s| !s.is_empty()) != Some(bound.as_str())
        {
            return Err(Refusal::Session);
        }
        Ok(Some(claims))
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a token limited to `tag` may join the room named by `room_id` or `alias`. Only room
/// tags limit joins; a channel or other tag is not about chat rooms.
pub fn may_join(tag: Option<&RequiredTag>, room_id: Option<&str>, alias: Option<&str>) -> bool {
    fn set(v: Option<&str>) -> Option<&str> {
        v.filter(|v| !v.is_empty())
    }
    match tag {
        Some(RequiredTag::RoomId(id)) => set(room_id) == Some(id.as_str()),
        Some(RequiredTag::RoomAlias(a)) => set(room_id).is_none() && set(alias) == Some(a.as_str()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_open_policies() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let check = TokenPolicy::Check {
            tokens: StaticTokens::new(["a"]),
            edge: EdgeAuth::new([("app", "s")]).unwrap(),
        };
        assert_eq!(check.check("a", ip, None, 0), Ok(None));
        assert_eq!(check.check("b", ip, None, 0), Err(Refusal::UnknownToken));
        assert_eq!(check.check("", ip, None, 0), Err(Refusal::Empty));
        assert_eq!(TokenPolicy::DenyAll.check("a", ip, None, 0), Err(Refusal::Denied));
        assert_eq!(TokenPolicy::AcceptAny.check("x", ip, None, 0), Ok(None));
        assert_eq!(TokenPolicy::AcceptAny.check("", ip, None, 0), Err(Refusal::Empty));
        let garbage = check.check("DIGEST:!!", ip, None, 0).unwrap_err();
        assert!(matches!(garbage, Refusal::Edge(_)), "{garbage:?}");
        // Debug shows counts, never a token or a secret.
        assert_eq!(format!("{check:?}"), "Check { 1 static tokens, 1 applications }");
        assert_eq!(format!("{:?}", TokenPolicy::AcceptAny), "AcceptAny");
        assert_eq!(format!("{:?}", TokenPolicy::DenyAll), "DenyAll");
    }

    #[test]
    fn room_tags_limit_joins() {
        let id = RequiredTag::RoomId("r1".into());
        let alias = RequiredTag::RoomAlias("lobby".into());
        assert!(may_join(Some(&id), Some("r1"), None));
        assert!(!may_join(Some(&id), Some("r2"), None));
        assert!(!may_join(Some(&id), None, Some("lobby")));
        assert!(may_join(Some(&alias), None, Some("lobby")));
        assert!(!may_join(Some(&alias), Some("r1"), Some("lobby")));
        assert!(may_join(Some(&RequiredTag::ChannelId("c".into())), Some("r9"), None));
        assert!(may_join(None, Some("any"), None));
    }

    #[test]
    fn mapped_addresses_are_their_ipv4_address() {
        assert_eq!(canonical("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
