//! Key-value buckets over streams, laid out as JetStream's own clients lay them out: bucket B is
//! the stream `KV_B` on subjects `$KV.B.>`, a key's value is the last message of `$KV.B.<key>`,
//! its revision that message's sequence, and a delete is a message with `KV-Operation: DEL`.
//!
//! Every write may carry the revision it was decided on ([`Bucket::put`]'s `expect`): the
//! write is refused if the key moved since, which is how two workers deciding about one key at
//! once end with one of them deciding again.

use super::wire::{StreamConfig, header};
use super::{Expect, MsgQuery, Store, StoreError, StoredMsg};
use crate::Bus;

/// A key's last entry. A deleted key keeps its delete marker's revision, so a write that
/// expects the key still absent can say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub revision: u64,
    /// `None` once deleted.
    pub value: Option<Vec<u8>>,
}

/// One bucket, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    name: String,
}

impl Bucket {
    /// `name` as JetStream allows a bucket's: letters, digits, `-` and `_`.
    pub fn new(name: &str) -> Result<Bucket, StoreError> {
        let ok =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(StoreError::Malformed(format!("bucket name {name:?}")));
        }
        Ok(Bucket { name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stream(&self) -> String {
        format!("KV_{}", self.name)
    }

    fn subject(&self, key: &str) -> Result<String, StoreError> {
        if !valid_key(key) {
            return Err(StoreError::Malformed(format!("key {key:?}")));
        }
        Ok(format!("$KV.{}.{key}", self.name))
    }

    /// The bucket's stream: one entry per key, every replica count the caller asks for.
    pub fn config(&self, replicas: usize, storage: super::wire::Storage) -> StreamConfig {
        StreamConfig {
            name: self.stream(),
            subjects: vec![format!("$KV.{}.>", self.name)],
            max_msgs_per_subject: 1,
            max_msg_size: -1,
            duplicate_window: 120_000_000_000,
            storage,
            num_replicas: replicas,
            allow_rollup_hdrs: true,
            deny_delete: true,
            allow_direct: true,
            republish: None,
        }
    }

    /// The key's last entry, `None` if it was never written.
    pub async fn entry<B: Bus>(&self, store: &Store<B>, key: &str) -> Result<Option<Entry>, StoreError> {
        let subject = self.subject(key)?;
        match store.get(&self.stream(), &MsgQuery::LastBySubject(subject)).await {
            Ok(msg) => Ok(Some(entry_of(msg))),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` and returns its revision. With `expect`, only if the key's revision is
    /// still that (0: never written), else [`StoreError::WrongLastSequence`] with the key's
    /// revision now.
    pub async fn put<B: Bus>(
        &self,
        store: &Store<B>,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<u64, StoreError> {
        let subject = self.subject(key)?;
        let expect = Expect { last_subject_seq: expect, ..Expect::default() };
        Ok(store.publish(&subject, Vec::new(), value, &expect).await?.seq)
    }

    /// Deletes the key (a marker with its own revision), with `expect` as for [`Bucket::put`].
    pub async fn delete<B: Bus>(
        &self,
        store: &Store<B>,
        key: &str,
        expect: Option<u64>,
    ) -> Result<u64, StoreError> {
        let subject = self.subject(key)?;
        let headers = vec![(header::KV_OPERATION.to_owned(), "DEL".to_owned())];
        let expect = Expect { last_subject_seq: expect, ..Expect::default() };
        Ok(store.publish(&subject, headers, Vec::new(), &expect).await?.seq)
    }
}

fn entry_of(msg: StoredMsg) -> Entry {
    let deleted = matches!(msg.header(header::KV_OPERATION), Some("DEL" | "PURGE"));
    Entry { revision: msg.seq, value: (!deleted).then_some(msg.data) }
}

/// Whether `key` is a key JetStream's clients accept: tokens of letters, digits, `-`, `_`, `=`
/// and `/`, separated by dots.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|t| !t.is_empty())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=/.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_those_jetstream_clients_accept() {
        assert!(Bucket::new("clientmq_sessions").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(Bucket::new(bad).is_err(), "{bad:?}");
        }
        for good in ["s1", "r.abc", "a/b=c", "A-_"] {
            assert!(valid_key(good), "{good:?}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "é"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
        let bucket = Bucket::new("b").unwrap();
        assert_eq!(bucket.subject("k.1").unwrap(), "$KV.b.k.1");
        assert!(bucket.subject("k 1").is_err());
    }
}
