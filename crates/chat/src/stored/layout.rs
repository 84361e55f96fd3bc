//! Where chat state lives in JetStream, and the check a worker makes before it serves: every
//! bucket and stream there with clientmq's settings (created when absent), on a server that
//! keeps them all.
//!
//! Names derive from the bus prefix, its dots made `_` (JetStream names cannot hold dots):
//! buckets `<P>_sessions` and `<P>_rooms`, stream `<P>_history` on `<P>.history.<room>.<kind>`,
//! republished to `<P>.<kind>.<room>` (`room` or `conv`: what gateways subscribe to).

use clientmq_bus::Bus;
use clientmq_bus::store::kv::Bucket;
use clientmq_bus::store::wire::{RePublish, Storage, StreamConfig, code};
use clientmq_bus::store::{Store, StoreError};

/// Why a worker cannot serve from the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(
        "JetStream is not enabled on the NATS server for this account: start nats-server with -js \
         (or `jetstream {{}}` in its configuration), or enable it for the account; or run one \
         worker with --memory, which keeps its state in its own memory"
    )]
    JetStreamOff,
    #[error(
        "nats-server is too old for clientmq's store: it dropped stream {stream}'s `{setting}` \
         setting (clientmq needs nats-server 2.9 or later)"
    )]
    TooOld { stream: String, setting: &'static str },
    #[error(
        "stream {stream} exists with other settings than clientmq's ({description}): remove it \
         (`nats stream rm {stream}`) or give this fleet another --nats-prefix"
    )]
    Conflicting { stream: String, description: String },
    #[error("cannot reach JetStream: {0}")]
    Store(#[from] StoreError),
}

/// The buckets and the stream, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub sessions: Bucket,
    pub rooms: Bucket,
    pub history: StreamConfig,
    replicas: usize,
    prefix: String,
}

/// Settings that nats-server 2.9 added and the store relies on: a server that drops them from
/// the configuration it echoes does not apply them.
const NEEDED: [&str; 2] = ["allow_direct", "republish"];

impl Layout {
    /// The layout of the fleet on `prefix`: streams with `replicas` copies, each room's last
    /// `history` events of each kind kept.
    pub fn new(prefix: &str, replicas: usize, history: usize) -> Layout {
        let name = prefix.replace('.', "_");
        let bucket = |what: &str| Bucket::new(&format!("{name}_{what}")).expect("a prefix is subject tokens");
        let history = StreamConfig {
            name: format!("{name}_history"),
            subjects: vec![format!("{prefix}.history.*.*")],
            max_msgs_per_subject: i64::try_from(history).unwrap_or(i64::MAX).max(1),
            max_msg_size: -1,
            duplicate_window: 120_000_000_000,
            storage: Storage::File,
            num_replicas: replicas,
            allow_rollup_hdrs: false,
            deny_delete: true,
            allow_direct: true,
            republish: Some(RePublish {
                src: format!("{prefix}.history.*.*"),
                dest: format!("{prefix}.{{{{wildcard(2)}}}}.{{{{wildcard(1)}}}}"),
            }),
        };
        Layout {
            sessions: bucket("sessions"),
            rooms: bucket("rooms"),
            history,
            replicas,
            prefix: prefix.to_owned(),
        }
    }

    /// The history subject of `room`'s events of `topic`'s kind (republished to the room's
    /// subject of that kind).
    pub fn history_subject(&self, room: &str, topic: clientmq_core::Topic) -> String {
        let kind = match topic {
            clientmq_core::Topic::Room => "room",
            clientmq_core::Topic::Conversation => "conv",
        };
        format!("{}.history.{}.{kind}", self.prefix, clientmq_bus::contract::room_token(room))
    }

    /// The bucket a cache's changes come from.
    pub fn bucket(&self, which: crate::stored::cache::Bucket) -> &Bucket {
        match which {
            crate::stored::cache::Bucket::Sessions => &self.sessions,
            crate::stored::cache::Bucket::Rooms => &self.rooms,
        }
    }

    fn streams(&self) -> [StreamConfig; 3] {
        [
            self.sessions.config(self.replicas, Storage::File),
            self.rooms.config(self.replicas, Storage::File),
            self.history.clone(),
        ]
    }

    /// Creates what is absent and checks what is there: JetStream answers, every stream has
    /// clientmq's settings, and the server kept the settings the store relies on.
    pub async fn ensure<B: Bus>(&self, store: &Store<B>) -> Result<(), StartError> {
        match store.check().await {
            Err(StoreError::NoResponders) => return Err(StartError::JetStreamOff),
            Err(StoreError::Api { err_code: code::JETSTREAM_NOT_ENABLED, .. }) => {
                return Err(StartError::JetStreamOff);
            }
            other => other?,
        }
        for config in self.streams() {
            let held = match store.create_stream(&config).await {
                Ok(held) => held,
                Err(StoreError::Api { err_code: code::STREAM_NAME_IN_USE, description, .. }) => {
                    return Err(StartError::Conflicting { stream: config.name, description });
                }
                Err(e) => return Err(e.into()),
            };
            let wanted = serde_json::to_value(&config).expect("a config serialises");
            for setting in NEEDED {
                if wanted.get(setting).is_some_and(|v| *v != serde_json::Value::Bool(false))
                    && held.get(setting).is_none()
                {
                    return Err(StartError::TooOld { stream: config.name, setting });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_bus::{Bus, BusMessage, Subscription};

    use super::*;

    async fn store() -> (Arc<ModelBus>, Store<ModelBus>) {
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus.clone(), "t", Duration::from_secs(1)).await.unwrap();
        (bus, store)
    }

    #[tokio::test]
    async fn a_fleet_s_layout_is_created_once_and_found_again() {
        let (bus, store) = store().await;
        let layout = Layout::new("clientmq", 1, 100);
        assert_eq!(layout.sessions.stream(), "KV_clientmq_sessions");
        layout.ensure(&store).await.unwrap();
        layout.ensure(&store).await.unwrap();
        // A history message reaches the room's subscribers by the stream's republish.
        let mut room = bus.subscribe("clientmq.room.r1", None).await.unwrap();
        let expect = clientmq_bus::store::Expect::default();
        store.publish("clientmq.history.r1.room", Vec::new(), b"joined".to_vec(), &expect).await.unwrap();
        let heard: BusMessage = room.next().await.unwrap();
        assert_eq!((heard.subject.as_str(), heard.payload.as_slice()), ("clientmq.room.r1", &b"joined"[..]));
        // A fleet on another prefix has its own names.
        let other = Layout::new("eu.chat", 1, 100);
        assert_eq!(other.history.name, "eu_chat_history");
        other.ensure(&store).await.unwrap();
    }

    #[tokio::test]
    async fn other_settings_under_a_name_are_refused_with_what_to_do() {
        let (_bus, store) = store().await;
        Layout::new("clientmq", 1, 100).ensure(&store).await.unwrap();
        let err = Layout::new("clientmq", 1, 50).ensure(&store).await.unwrap_err();
        assert!(
            matches!(&err, StartError::Conflicting { stream, .. } if stream == "clientmq_history"),
            "{err}"
        );
        assert!(err.to_string().contains("nats stream rm clientmq_history"), "{err}");
    }
}
