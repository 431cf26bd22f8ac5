//! Package resources: the backend (apt or dnf) chosen from os-release.

pub mod dpkg;
pub mod rpm;

/// One package as the package database records it.
///
/// Both backends produce this type: [`dpkg::parse_status`] from
/// `/var/lib/dpkg/status` and [`rpm::parse_query`] from `rpm -qa`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstalledPackage {
    /// Package name, without architecture qualifier (`libc6`, not `libc6:amd64`).
    pub name: String,
    /// Version as the backend writes it: Debian `[epoch:]upstream[-revision]`
    /// (`7.88.1-10+deb12u5`, `2:9.0.1378-2`), or rpm `[epoch:]version-release`
    /// with a zero epoch left out (`1.0-1`, `2:3.1.4-5.el9`).
    pub version: String,
    /// Architecture (`amd64`, `all`, `x86_64`, `noarch`).
    pub arch: String,
    /// Whether the package's files are on the machine and configured. A dpkg
    /// entry that only remembers configuration files, or whose installation
    /// was interrupted, is listed with `installed: false`.
    pub installed: bool,
}

/// Whether an installed `version` satisfies a version pin from the spec.
///
/// The pin is a glob: `*` matches any run of characters (including none),
/// `?` matches exactly one character, and every other character matches
/// itself, so a pin without wildcards is an exact comparison. Matching is
/// anchored at both ends: `7.88.*` matches `7.88.1-10+deb12u5` but not
/// `17.88.1`.
///
/// Epochs are what operators forget: when the pin has no `:` and the version
/// carries an epoch (`2:9.0.1378-2`), the pin is also tried against the
/// version without it, so `9.0.*` matches. A pin that names an epoch is
/// compared against the full version only.
pub fn version_matches(pin: &str, version: &str) -> bool {
    if glob_matches(pin, version) {
        return true;
    }
    if pin.contains(':') {
        return false;
    }
    match version.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            glob_matches(pin, rest)
        }
        _ => false,
    }
}

/// Anchored glob match with `*` and `?`, linear in practice: on a mismatch
/// it backtracks only to the most recent `*`, which is enough because a
/// later `*` can absorb whatever an earlier one would have.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position of the last `*` seen in the pattern, and the text position it
    // is currently assumed to have matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || text.get(t) == Some(&c) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::version_matches;

    #[test]
    fn exact_pin_matches_only_itself() {
        assert!(version_matches("7.88.1-10+deb12u5", "7.88.1-10+deb12u5"));
        assert!(!version_matches("7.88.1-10+deb12u5", "7.88.1-10+deb12u12"));
        assert!(!version_matches("7.88.1", "7.88.1-10"));
        assert!(!version_matches("", "1.0"));
        assert!(version_matches("", ""));
    }

    #[test]
    fn star_matches_any_run() {
        assert!(version_matches("7.88.*", "7.88.1-10+deb12u5"));
        assert!(version_matches("7.88.*", "7.88."));
        assert!(!version_matches("7.88.*", "7.89.0-1"));
        assert!(!version_matches("7.88.*", "17.88.1"));
        assert!(version_matches("*", "anything"));
        assert!(version_matches("*", ""));
        assert!(version_matches("*deb12*", "7.88.1-10+deb12u5"));
        assert!(version_matches("1.*-*", "1.0-1"));
        assert!(!version_matches("1.*-*", "1.0"));
        assert!(version_matches("**1", "1"));
    }

    #[test]
    fn star_backtracks() {
        assert!(version_matches("*1-1", "1.1-1-1"));
        assert!(version_matches("a*b*c", "aXbYbZc"));
        assert!(!version_matches("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn question_mark_matches_one_character() {
        assert!(version_matches("1.?-1", "1.0-1"));
        assert!(!version_matches("1.?-1", "1.10-1"));
        assert!(!version_matches("1.0?", "1.0"));
        assert!(version_matches("1.0-é?", "1.0-éa"));
    }

    #[test]
    fn epoch_may_be_left_out_of_the_pin() {
        assert!(version_matches("9.0.*", "2:9.0.1378-2"));
        assert!(version_matches("2:9.0.*", "2:9.0.1378-2"));
        assert!(version_matches("9.0.1378-2", "2:9.0.1378-2"));
        assert!(!version_matches("1:9.0.*", "2:9.0.1378-2"));
        assert!(!version_matches("9.0.*", "x:9.0.1378-2"));
    }
}
