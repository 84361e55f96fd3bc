//! Connection ids: 32 random alphanumeric characters, as the seed gateway issued them.

use std::fmt;
use std::str::FromStr;

use rand_core::Rng;

/// Length of a connection id in characters.
pub const ID_LEN: usize = 32;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A connection id. `Copy` and ordered, so registries keyed by it iterate deterministically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId([u8; ID_LEN]);

impl ConnectionId {
    /// Draws a fresh id from `rng`. Uniform over the alphabet (rejection sampling, no modulo bias).
    pub fn random(rng: &mut dyn Rng) -> Self {
        let mut id = [0u8; ID_LEN];
        let mut filled = 0;
        let mut buf = [0u8; 64];
        while filled < ID_LEN {
            rng.fill_bytes(&mut buf);
            for &b in &buf {
                // 248 = 4 * 62: bytes above it would favour the first characters.
                if b < 248 && filled < ID_LEN {
                    id[filled] = ALPHABET[(b % 62) as usize];
                    filled += 1;
                }
            }
        }
        ConnectionId(id)
    }

    pub fn as_str(&self) -> &str {
        // Only ALPHABET bytes are ever stored.
        std::str::from_utf8(&self.0).expect("connection ids are ASCII")
    }
}

/// Error for [`ConnectionId::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a connection id is {ID_LEN} ASCII letters or digits")]
pub struct InvalidConnectionId;

impl FromStr for ConnectionId {
    type Err = InvalidConnectionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != ID_LEN || !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(InvalidConnectionId);
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(bytes);
        Ok(ConnectionId(id))
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn random_ids_are_32_alphanumerics_and_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = ConnectionId::random(&mut rng);
        let b = ConnectionId::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(a.as_str().parse::<ConnectionId>(), Ok(a));
        assert!("short".parse::<ConnectionId>().is_err());
        assert!("é".repeat(16).parse::<ConnectionId>().is_err());
    }
}
