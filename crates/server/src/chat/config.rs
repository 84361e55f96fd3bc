//! Settings of the embedded backend: who may authenticate, and every bound it enforces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which `authenticationToken`s open a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPolicy {
    /// Nothing configured: every Authenticate is refused (safe default; the log says how to fix it).
    DenyAll,
    /// Exactly these tokens.
    Accept(BTreeSet<String>),
    /// Development only: any non-empty token.
    AcceptAny,
}

impl TokenPolicy {
    pub fn accepts(&self, token: &str) -> bool {
        match self {
            _ if token.is_empty() => false,
            TokenPolicy::DenyAll => false,
            TokenPolicy::Accept(tokens) => tokens.contains(token),
            TokenPolicy::AcceptAny => true,
        }
    }

    /// Builds the policy from the CLI's three sources.
    pub fn from_sources(
        dev_accept_any: bool,
        tokens: &[String],
        tokens_file: Option<&Path>,
    ) -> Result<TokenPolicy, TokenError> {
        let mut accepted: BTreeSet<String> =
            tokens.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if let Some(path) = tokens_file {
            accepted.extend(read_tokens_file(path)?);
        }
        match (dev_accept_any, accepted.is_empty(), tokens_file.is_some()) {
            (true, true, false) => Ok(TokenPolicy::AcceptAny),
            (true, _, _) => Err(TokenError::DevModeWithTokens),
            (false, true, true) => Err(TokenError::EmptyFile(tokens_file.expect("checked").to_owned())),
            (false, true, false) => Ok(TokenPolicy::DenyAll),
            (false, false, _) => Ok(TokenPolicy::Accept(accepted)),
        }
    }
}

/// A token configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read --tokens-file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("--tokens-file {0} holds no token (one a line; blank lines and # comments are ignored)")]
    EmptyFile(PathBuf),
    #[error("--dev-accept-any-token cannot be combined with --tokens or --tokens-file")]
    DevModeWithTokens,
}

/// One token a line; blank lines and lines starting with `#` are skipped.
fn read_tokens_file(path: &Path) -> Result<Vec<String>, TokenError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenError::Unreadable { path: path.to_owned(), reason: e.to_string() })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Embedded backend settings. [`ChatConfig::default`] denies every token; see [`TokenPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatConfig {
    pub tokens: TokenPolicy,
    /// How long a session outlives its last connection; a re-Authenticate within it resumes.
    pub session_grace: Duration,
    /// How long a room with no members is kept before it is forgotten.
    pub room_idle: Duration,
    /// Sessions at once, attached or in their grace period.
    pub max_sessions: usize,
    pub max_rooms: usize,
    pub max_members_per_room: usize,
    /// Rooms one session may be a member of at once. Twice this (room and conversation) should
    /// stay under the gateway's `max_subscriptions`, so that every membership is also subscribed.
    pub max_rooms_per_session: usize,
    /// Chat messages kept per room; the oldest is dropped first.
    pub max_history: usize,
    /// Bytes of one chat message's text.
    pub max_message_bytes: usize,
    /// Bytes of any other client-supplied string (names, aliases, uris, options).
    pub max_field_bytes: usize,
    /// Entries of any client-supplied list (options, streams).
    pub max_list_len: usize,
    /// Events and subscription changes waiting to be handed to the gateway; beyond it new events
    /// are dropped and counted (subscription changes never are).
    pub delivery_queue: usize,
    /// Milliseconds since the Unix epoch at the backend's start, for wire timestamps. Passed in
    /// (rather than read from the system clock later) so simulated runs stay deterministic.
    pub wall_clock_start_ms: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            tokens: TokenPolicy::DenyAll,
            session_grace: Duration::from_secs(30),
            room_idle: Duration::from_secs(3600),
            max_sessions: 10_000,
            max_rooms: 1_000,
            max_members_per_room: 1_000,
            max_rooms_per_session: 64,
            max_history: 100,
            max_message_bytes: 4 * 1024,
            max_field_bytes: 1024,
            max_list_len: 32,
            delivery_queue: 16 * 1024,
            wall_clock_start_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_from_sources() {
        let none: &[String] = &[];
        assert_eq!(TokenPolicy::from_sources(false, none, None), Ok(TokenPolicy::DenyAll));
        assert_eq!(TokenPolicy::from_sources(true, none, None), Ok(TokenPolicy::AcceptAny));
        let list = ["a".to_owned(), " ".to_owned()];
        let policy = TokenPolicy::from_sources(false, &list, None).unwrap();
        assert!(policy.accepts("a") && !policy.accepts("b") && !policy.accepts(""));
        assert_eq!(TokenPolicy::from_sources(true, &list, None), Err(TokenError::DevModeWithTokens));
        assert!(TokenPolicy::AcceptAny.accepts("x") && !TokenPolicy::AcceptAny.accepts(""));
        assert!(!TokenPolicy::DenyAll.accepts("x"));
    }

    #[test]
    fn tokens_file_skips_comments_and_blanks() {
        let dir = std::env::temp_dir().join(format!("clientmq-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# ops tokens\n\n alpha \nbeta\n").unwrap();
        let policy = TokenPolicy::from_sources(false, &[], Some(&file)).unwrap();
        assert_eq!(policy, TokenPolicy::Accept(["alpha".to_owned(), "beta".to_owned()].into()));
        std::fs::write(&file, "# nothing\n").unwrap();
        assert_eq!(
            TokenPolicy::from_sources(false, &[], Some(&file)),
            Err(TokenError::EmptyFile(file.clone()))
        );
        let missing = dir.join("missing");
        assert!(matches!(
            TokenPolicy::from_sources(false, &[], Some(&missing)),
            Err(TokenError::Unreadable { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
