//! A simulated bus with NATS core's semantics, for turmoil (in progress: the wire protocol and
//! the subject rules; the broker host and the client come next).
//!
//! Subjects are dot-separated tokens; a subscription may use `*` (one token) and `>` (one or
//! more trailing tokens). A published subject and a reply subject have no wildcards.
//!
//! Every frame is a big-endian `u32` length, then that many bytes: an operation byte and its
//! fields (see [`proto::Frame`]).

pub mod proto;

/// Whether `subject` is well formed: non-empty tokens separated by dots, no whitespace; with
/// `wildcards`, a token `*` anywhere and a token `>` last are allowed, without, they are not.
pub fn valid_subject(subject: &str, wildcards: bool) -> bool {
    if subject.is_empty() || subject.chars().any(char::is_whitespace) {
        return false;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| match *t {
        "" => false,
        "*" => wildcards,
        ">" => wildcards && i == tokens.len() - 1,
        _ => true,
    })
}

/// Whether a literal `subject` matches the subscription `pattern`, token by token.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}
