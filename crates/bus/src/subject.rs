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

/// Whether every subject `filter` matches is matched by `pattern` too.
pub fn subset(filter: &str, pattern: &str) -> bool {
    let (f, p): (Vec<&str>, Vec<&str>) = (filter.split('.').collect(), pattern.split('.').collect());
    for i in 0.. {
        match (f.get(i), p.get(i)) {
            (Some(_), Some(&">")) | (None, None) => return true,
            (Some(&">"), _) => return false,
            (Some(_), Some(&"*")) => {}
            (Some(&"*"), Some(_)) => return false,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
    unreachable!("the loop returns once either pattern ends")
}

/// Where a subject transform (`src` to `dest`, as a stream's republish has it) sends `subject`:
/// `None` unless `subject` matches `src`. `dest` names `src`'s `*` tokens as `{{wildcard(N)}}`
/// (or `$N`), counted from 1, and a last `>` in both carries the rest over.
pub fn transform(src: &str, dest: &str, subject: &str) -> Option<String> {
    if !subject_matches(src, subject) {
        return None;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let pattern: Vec<&str> = src.split('.').collect();
    let stars: Vec<&str> = pattern.iter().zip(&tokens).filter(|(p, _)| **p == "*").map(|(_, t)| *t).collect();
    let rest = (pattern.last() == Some(&">")).then(|| tokens[pattern.len() - 1..].join("."));
    let out: Option<Vec<String>> = dest
        .split('.')
        .map(|t| match (wildcard_index(t), t) {
            (Some(n), _) => stars.get(n.checked_sub(1)?).map(|s| (*s).to_owned()),
            (None, ">") => rest.clone(),
            (None, t) => Some(t.to_owned()),
        })
        .collect();
    out.map(|tokens| tokens.join("."))
}

/// Whether `dest` is a transform of `src` that [`transform`] can apply.
pub fn transform_valid(src: &str, dest: &str) -> bool {
    let stars = src.split('.').filter(|t| *t == "*").count();
    let src_rest = src.ends_with(".>") || src == ">";
    valid_subject(src, true)
        && dest.split('.').all(|t| match (wildcard_index(t), t) {
            (Some(n), _) => (1..=stars).contains(&n),
            (None, ">") => src_rest,
            (None, "*") => false,
            (None, t) => !t.is_empty() && !t.contains(char::is_whitespace),
        })
}

/// `N` of a destination token `{{wildcard(N)}}` or `$N`.
fn wildcard_index(token: &str) -> Option<usize> {
    let inner = token.strip_prefix("{{wildcard(").and_then(|t| t.strip_suffix(")}}"));
    inner.or_else(|| token.strip_prefix('$'))?.trim().parse().ok()
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

    #[test]
    fn a_subset_is_matched_whole_by_its_pattern() {
        for (f, p) in
            [("t.a", "t.>"), ("t.*", "t.>"), ("t.>", "t.>"), ("t.a", "t.*"), ("t.a.b", ">"), ("t.a", "t.a")]
        {
            assert!(subset(f, p), "{f} in {p}");
        }
        for (f, p) in [("t.>", "t.*"), ("u.a", "t.>"), ("t", "t.>"), ("t.*", "t.a"), ("t.a.b", "t.*")] {
            assert!(!subset(f, p), "{f} not in {p}");
        }
    }

    #[test]
    fn a_transform_carries_wildcard_tokens_over() {
        let t = |src, dest, subject| transform(src, dest, subject);
        assert_eq!(t("h.*", "room.{{wildcard(1)}}", "h.r1").as_deref(), Some("room.r1"));
        assert_eq!(t("h.*.*", "x.$2.$1", "h.a.b").as_deref(), Some("x.b.a"));
        assert_eq!(t("h.>", "room.>", "h.a.b").as_deref(), Some("room.a.b"));
        assert_eq!(t("h.*", "room.{{wildcard(1)}}", "g.r1"), None);
        assert!(transform_valid("h.*", "room.{{wildcard(1)}}"));
        assert!(transform_valid("h.>", "room.>"));
        assert!(!transform_valid("h.*", "room.{{wildcard(2)}}"));
        assert!(!transform_valid("h.*", "room.>"));
        assert!(!transform_valid("h.*", "room.*"));
    }
}
