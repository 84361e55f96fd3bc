//! NATS subject syntax and matching, as the server applies them: for the simulated broker and
//! the store model, which route and capture what a real server would.

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

/// Whether some literal subject matches both patterns (two streams may not share one).
pub fn overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) | (None, None) => return true,
            (Some(x), Some(y)) if *x == "*" || *y == "*" || x == y => {}
            _ => return false,
        }
    }
    unreachable!("the loop returns once either pattern ends")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_overlap_when_one_subject_matches_both() {
        for (a, b) in [("a.>", "a.b"), ("a.*", "*.b"), ("a.b", "a.b"), (">", "x.y.z"), ("a.*.c", "a.b.>")] {
            assert!(overlap(a, b) && overlap(b, a), "{a} {b}");
        }
        for (a, b) in [("a.>", "a"), ("a.*", "a.b.c"), ("a.b", "a.c"), ("a.*", "b.>")] {
            assert!(!overlap(a, b) && !overlap(b, a), "{a} {b}");
        }
    }
}
