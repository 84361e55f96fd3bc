//! Settings of the chat logic: every bound it enforces, and the flags that set them (shared by
//! `clientmq-chat` and the gateway's embedded backend). Who may authenticate is the gateway's to
//! check. Each default is written once, in [`ChatConfig::default`]; the flags read it.

use std::sync::LazyLock;

use clientmq_bus::process::env_var;
use std::time::Duration;

/// Settings of the chat logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatConfig {
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

/// The defaults, for the flags' `default_value_t`.
static DEFAULT: LazyLock<ChatConfig> = LazyLock::new(ChatConfig::default);

/// Bounds of the chat logic, shared by the server's embedded backend and `clientmq-chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Seconds a session outlives its connection; re-authenticating with its id within them resumes it.
    #[arg(long, env = "CLIENTMQ_SESSION_GRACE_SECS", default_value_t = DEFAULT.session_grace.as_secs_f64())]
    pub session_grace_secs: f64,
    /// Seconds an empty chat room is kept before it is forgotten.
    #[arg(long, env = "CLIENTMQ_ROOM_IDLE_SECS", default_value_t = DEFAULT.room_idle.as_secs_f64())]
    pub room_idle_secs: f64,
    /// Sessions at once (attached or in their grace period); more get status `capacity`.
    #[arg(long, env = "CLIENTMQ_MAX_SESSIONS", default_value_t = DEFAULT.max_sessions)]
    pub max_sessions: usize,
    /// Chat rooms at once.
    #[arg(long, env = "CLIENTMQ_MAX_ROOMS", default_value_t = DEFAULT.max_rooms)]
    pub max_rooms: usize,
    /// Members per chat room.
    #[arg(long, env = "CLIENTMQ_MAX_ROOM_MEMBERS", default_value_t = DEFAULT.max_members_per_room)]
    pub max_room_members: usize,
    /// Rooms one session may be in at once.
    #[arg(long, env = "CLIENTMQ_MAX_ROOMS_PER_SESSION", default_value_t = DEFAULT.max_rooms_per_session)]
    pub max_rooms_per_session: usize,
    /// Chat messages kept per room (the oldest is dropped first).
    #[arg(long, env = "CLIENTMQ_MAX_CHAT_HISTORY", default_value_t = DEFAULT.max_history)]
    pub max_chat_history: usize,
    /// Bytes of one chat message's text; longer ones get status `too-large`.
    #[arg(long, env = "CLIENTMQ_MAX_CHAT_MESSAGE_BYTES", default_value_t = DEFAULT.max_message_bytes)]
    pub max_chat_message_bytes: usize,
}

/// A chat flag that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0} ({env}) must be greater than zero", env = env_var(.0))]
    Zero(&'static str),
    #[error("--{0} ({env}) must be zero or a positive number of seconds", env = env_var(.0))]
    NonNegativeSeconds(&'static str),
    #[error(
        "--max-rooms-per-session (CLIENTMQ_MAX_ROOMS_PER_SESSION) must be at most {0}: each room takes two gateway subscriptions"
    )]
    RoomsPerSession(usize),
}

fn non_negative_secs(name: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| ConfigError::NonNegativeSeconds(name))
}

fn positive(name: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(ConfigError::Zero(name)) } else { Ok(value) }
}

impl ChatArgs {
    /// Settings of the chat logic. `wall_clock_start_ms` is left at 0 for the caller to set from
    /// the system clock.
    pub fn chat_config(&self) -> Result<ChatConfig, ConfigError> {
        // Every membership must fit the connection's subscription table (room + conversation).
        let most = clientmq_core::Config::default().max_subscriptions / 2;
        if self.max_rooms_per_session > most {
            return Err(ConfigError::RoomsPerSession(most));
        }
        Ok(ChatConfig {
            session_grace: non_negative_secs("session-grace-secs", self.session_grace_secs)?,
            room_idle: non_negative_secs("room-idle-secs", self.room_idle_secs)?,
            max_sessions: positive("max-sessions", self.max_sessions)?,
            max_rooms: positive("max-rooms", self.max_rooms)?,
            max_members_per_room: positive("max-room-members", self.max_room_members)?,
            max_rooms_per_session: positive("max-rooms-per-session", self.max_rooms_per_session)?,
            max_history: self.max_chat_history,
            max_message_bytes: positive("max-chat-message-bytes", self.max_chat_message_bytes)?,
            ..ChatConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        chat: ChatArgs,
    }

    fn parsed(args: &[&str]) -> Result<ChatConfig, ConfigError> {
        Cli::try_parse_from(std::iter::once("clientmq-chat").chain(args.iter().copied()))
            .unwrap()
            .chat
            .chat_config()
    }

    #[test]
    fn the_flags_set_the_chat_bounds_and_refuse_what_cannot_work() {
        assert_eq!(parsed(&[]).unwrap().session_grace, ChatConfig::default().session_grace);
        let set = parsed(&[
            "--session-grace-secs",
            "1.5",
            "--room-idle-secs",
            "0",
            "--max-sessions",
            "2",
            "--max-rooms",
            "3",
            "--max-room-members",
            "4",
            "--max-rooms-per-session",
            "5",
            "--max-chat-history",
            "0",
            "--max-chat-message-bytes",
            "6",
        ])
        .unwrap();
        assert_eq!((set.session_grace, set.room_idle), (Duration::from_millis(1500), Duration::ZERO));
        let bounds = (set.max_sessions, set.max_rooms, set.max_members_per_room, set.max_rooms_per_session);
        assert_eq!(bounds, (2, 3, 4, 5));
        assert_eq!((set.max_history, set.max_message_bytes), (0, 6));

        for (flag, name) in [
            ("--max-sessions", "max-sessions"),
            ("--max-rooms", "max-rooms"),
            ("--max-room-members", "max-room-members"),
            ("--max-rooms-per-session", "max-rooms-per-session"),
            ("--max-chat-message-bytes", "max-chat-message-bytes"),
        ] {
            assert_eq!(parsed(&[flag, "0"]), Err(ConfigError::Zero(name)), "{flag}");
        }
        assert_eq!(
            parsed(&["--session-grace-secs=-1"]),
            Err(ConfigError::NonNegativeSeconds("session-grace-secs"))
        );
        assert_eq!(parsed(&["--room-idle-secs=-1"]), Err(ConfigError::NonNegativeSeconds("room-idle-secs")));
        // Each membership takes two of a connection's 256 subscriptions.
        assert!(parsed(&["--max-rooms-per-session", "128"]).is_ok());
        assert_eq!(parsed(&["--max-rooms-per-session", "129"]), Err(ConfigError::RoomsPerSession(128)));
        let said = ConfigError::Zero("max-sessions").to_string();
        assert_eq!(said, "--max-sessions (CLIENTMQ_MAX_SESSIONS) must be greater than zero");
    }
}
