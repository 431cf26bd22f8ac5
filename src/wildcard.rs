//! The one `*`/`?` wildcard matcher trueup uses where a person writes a
//! simple pattern: package version pins and known_hosts host patterns.
//! `glob::Pattern` does the matching; every other character, `[` and `]`
//! included, stands for itself, so a pattern is never a syntax error.

/// Whether letters must match in case (version pins) or not (host names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Sensitive,
    Insensitive,
}

/// Whether all of `text` matches `pattern`, where `*` matches any run of
/// characters (none included) and `?` exactly one.
pub fn matches(pattern: &str, text: &str, case: Case) -> bool {
    let mut escaped = String::with_capacity(pattern.len() + 8);
    let mut literal = String::new();
    for c in pattern.chars() {
        // `**` means something else to `glob` (any path depth, and only as
        // a whole component); a run of stars matches what one star does.
        if c == '*' && literal.is_empty() && escaped.ends_with('*') {
            continue;
        }
        if c == '*' || c == '?' {
            escaped.push_str(&glob::Pattern::escape(&literal));
            literal.clear();
            escaped.push(c);
        } else {
            literal.push(c);
        }
    }
    escaped.push_str(&glob::Pattern::escape(&literal));
    let options = glob::MatchOptions {
        case_sensitive: case == Case::Sensitive,
        // Neither versions nor host names are paths: `*` crosses `/` and a
        // leading `.` is an ordinary character.
        require_literal_separator: false,
        require_literal_leading_dot: false,
    };
    match glob::Pattern::new(&escaped) {
        Ok(p) => p.matches_with(text, options),
        // Escaping leaves only `*` and `?` special; unreachable, and no
        // match is the safe answer if it ever were.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes(p: &str, t: &str) -> bool {
        matches(p, t, Case::Sensitive)
    }

    #[test]
    fn star_and_question_mark_anchored_at_both_ends() {
        assert!(yes("*", ""));
        assert!(yes("*", "anything/with/slashes"));
        assert!(yes("7.88.*", "7.88.1-10+deb12u5"));
        assert!(!yes("7.88.*", "17.88.1"));
        assert!(yes("a*b*c", "aXbYbZc"));
        assert!(!yes("a*b", "ac"));
        assert!(yes("web?.example.com", "web1.example.com"));
        assert!(!yes("web?.example.com", "web10.example.com"));
        assert!(!yes("1.0", "1.0-1"));
        assert!(yes("**1", "1"));
        assert!(yes("a**", "a/b"));
        assert!(yes("*?*", "x"));
        assert!(!yes("*?*", ""));
    }

    #[test]
    fn brackets_and_other_characters_are_literal() {
        assert!(yes("1.0[2]", "1.0[2]"));
        assert!(!yes("1.0[2]", "1.02"));
        assert!(yes("[", "["));
        assert!(yes("a!b", "a!b"));
        assert!(yes(".hidden*", ".hidden-x"));
    }

    #[test]
    fn case_is_chosen_by_the_caller() {
        assert!(!matches("WEB*", "web1", Case::Sensitive));
        assert!(matches("WEB*", "web1", Case::Insensitive));
    }
}
