//! Settings of the chat logic: every bound it enforces. Who may authenticate is the gateway's
//! to check (`crate::tokens`).

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
