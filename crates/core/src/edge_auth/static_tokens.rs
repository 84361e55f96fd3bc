//! Static tokens, compared in time that does not depend on where a candidate differs.

use std::fmt;

use ctutils::{Choice, CtEq};
use sha2::{Digest, Sha256};

/// A set of accepted static token strings.
///
/// Contract:
/// - Tokens are kept as SHA-256 digests only, and compared as such: [`accepts`](Self::accepts)
///   hashes the candidate once and compares its digest with every accepted digest in constant
///   time, without stopping at a match. How long it takes depends on the candidate's length and
///   the number of accepted tokens, not on which bytes of a candidate are right.
/// - The empty token is never accepted (an empty one given to [`new`](Self::new) is left out).
/// - Tokens are taken as they are: nothing is trimmed.
/// - `Debug` shows how many tokens there are, never a token.
#[derive(Clone, Default)]
pub struct StaticTokens {
    digests: Vec<[u8; 32]>,
}

impl StaticTokens {
    /// The set of `tokens`, less empty ones and duplicates.
    pub fn new<I, T>(tokens: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut digests: Vec<[u8; 32]> = tokens
            .into_iter()
            .filter_map(|token| Some(token.as_ref()).filter(|t| !t.is_empty()).map(digest))
            .collect();
        digests.sort_unstable();
        digests.dedup();
        StaticTokens { digests }
    }

    /// Whether `candidate` is one of the accepted tokens.
    pub fn accepts(&self, candidate: &str) -> bool {
        if candidate.is_empty() {
            return false;
        }
        let candidate = digest(candidate);
        let mut accepted = Choice::FALSE;
        for digest in &self.digests {
            accepted |= digest.ct_eq(&candidate);
        }
        accepted.to_bool()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

impl<T: AsRef<str>> FromIterator<T> for StaticTokens {
    fn from_iter<I: IntoIterator<Item = T>>(tokens: I) -> Self {
        StaticTokens::new(tokens)
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens").field("tokens", &self.digests.len()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_configured_tokens() {
        let tokens = StaticTokens::new(["alpha", "beta", "", "alpha"]);
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts("alpha"));
        assert!(tokens.accepts("beta"));
        for other in ["", "alph", "alphaa", "Alpha", " alpha", "gamma", "beta\n"] {
            assert!(!tokens.accepts(other), "{other:?}");
        }
    }

    #[test]
    fn empty_set_and_empty_token() {
        assert!(!StaticTokens::default().accepts("anything"));
        assert!(!StaticTokens::new([""]).accepts(""));
        assert!(StaticTokens::new([""]).is_empty());
        assert!(!StaticTokens::new(["a"]).is_empty());
        let collected: StaticTokens = ["x", "y"].into_iter().collect();
        assert!(collected.accepts("y") && collected.len() == 2);
    }

    proptest::proptest! {
        #[test]
        fn accepts_is_membership(
            tokens in proptest::collection::vec("[ab]{0,3}", 0..5),
            candidate in "[ab]{0,3}",
        ) {
            let expected = !candidate.is_empty() && tokens.contains(&candidate);
            proptest::prop_assert_eq!(StaticTokens::new(&tokens).accepts(&candidate), expected);
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let debug = format!("{:?}", StaticTokens::new(["s3cr3t-token"]));
        assert_eq!(debug, "StaticTokens { tokens: 1 }");
    }
}
