//! Parser for the installed-package database (rpm).
//!
//! The dnf backend observes packages with
//! `rpm -qa [--root R] --qf QUERY_FORMAT` (see [`QUERY_FORMAT`]) and parses
//! the output with [`parse_query`]: one tab-separated line per installed
//! package, so nothing in a name or version can be mistaken for a separator.
//!
//! # Driving real dnf and rpm on a Debian build machine
//!
//! The integration tests run the real dnf 4 (Debian 12 ships dnf 4.14 and
//! rpm 4.18; dnf 5 is not packaged there) against an empty installroot and a
//! local repository built by `tests/fixtures/rpm/build-test-rpms.sh OUT`.
//! These command lines were run on Debian 12 and work; `OUT` is the script's
//! output directory and `R` the installroot (created by dnf if missing):
//!
//! ```text
//! export HOME=OUT/rpm-home      # .rpmmacros: %_dbpath /var/lib/rpm
//! dnf -y -q --installroot=R --releasever=trueup --config=OUT/dnf.conf \
//!     --noplugins --setopt=reposdir=OUT/repos.d \
//!     --disablerepo='*' --enablerepo=trueup-test \
//!     install trueup-test-a trueup-test-b        # or: remove trueup-test-b
//! rpm --root R --dbpath /var/lib/rpm -qa --qf "$QUERY_FORMAT"
//! rpm --root R --dbpath /var/lib/rpm -e --nodeps trueup-test-b
//! ```
//!
//! Quirks behind each part of that:
//!
//! - **Database location.** Debian's rpm sets `%_dbpath` to `~/.rpmdb`,
//!   expanded from `$HOME` at every call (Fedora uses
//!   `/usr/lib/sysimage/rpm`, RHEL 8/9 `/var/lib/rpm`). With `--root R` it
//!   is relative to R, so a root-run dnf writes `R/root/.rpmdb`, and an rpm
//!   run with another `HOME` silently sees an *empty* database and exits 0.
//!   dnf has no option for the database path, so both tools get a `HOME`
//!   whose `.rpmmacros` sets `%_dbpath /var/lib/rpm` (the RHEL layout), and
//!   rpm also gets `--dbpath /var/lib/rpm` explicitly. A query against a
//!   root with no database at all also prints nothing and exits 0.
//! - **`--releasever`.** dnf 4 derives it from a `system-release` package in
//!   the installroot; an empty root has none and dnf warns "Unable to detect
//!   release version". Any value silences it; the test repository does not
//!   use `$releasever`.
//! - **`--config`.** Without it the host's `/etc/dnf/dnf.conf` applies, and
//!   Debian's sets `skip_if_unavailable=True`, which turns a broken test
//!   repository into a silent "nothing to do". `--config=/dev/null` is
//!   refused ("Config file does not exist"), so the script writes a small
//!   `dnf.conf` (`gpgcheck=0`, `install_weak_deps=0`,
//!   `skip_if_unavailable=0`, `keepcache=0`).
//! - **Repositories.** `--setopt=reposdir=` on the command line is a host
//!   path even with `--installroot` (dnf 4 otherwise looks for reposdir and
//!   the config inside the installroot first, then falls back to the
//!   host's). `--disablerepo='*' --enablerepo=trueup-test` keeps anything
//!   else out; the repository is `file://`, so no network is used and dnf
//!   reads packages in place (nothing is downloaded into the cache, and
//!   `keepcache` does not matter).
//! - **Cache and logs.** Cache (`R/var/cache/dnf`), history
//!   (`R/var/lib/dnf`) and logs (`R/var/log/dnf*.log`) land inside the
//!   installroot, which is what a test wants. Do not move them:
//!   `--setopt=cachedir=DIR` uses host DIR but still creates
//!   `R/DIR/expired_repos.json`, and `--setopt=logdir=DIR` writes
//!   `hawkey.log` to host DIR (dnf exits 1 with only "Failed to open log
//!   file" if DIR does not exist) and the other logs to `R/DIR`.
//! - **Exit codes.** Installing something already installed: "Nothing to
//!   do.", exit 0. Removing something not installed: "No match for
//!   argument", exit 0. Installing a name no repository has: "Error: Unable
//!   to find a match", exit 1. Pins work as arguments: `trueup-test-b-1.0`
//!   and `'trueup-test-b-1.0*'` both install 1.0-1. `-q` still prints the
//!   "Installed:"/"Removed:" summary.
//! - **rpm by hand.** Debian's rpm prints "RPM should not be used directly
//!   install RPM packages, use Alien instead!" to stderr for `-i`/`-e`; the
//!   exit code is unaffected. `rpm -e` of a package that is not installed
//!   exits 1 ("package … is not installed").
//! - **Output.** `%{EPOCHNUM}` prints `0` for "no epoch" where `%{EPOCH}`
//!   would print `(none)`. Imported signing keys appear as `gpg-pubkey`
//!   entries whose `%{ARCH}` is `(none)`; they are not packages and
//!   [`parse_query`] leaves them out, as `dnf list --installed` does.
//! - **dnf 5** (Fedora 41+) is not packaged for Debian 12, so these lines
//!   are untested with it. Per dnf5-installroot(7): with `--installroot` it
//!   takes the config file, reposdir and vars from inside the installroot
//!   unless `--use-host-config` is given; paths given on the command line
//!   (`--config=`, `--setopt=reposdir=`, `cachedir`, `logdir`) are host
//!   paths; and without `--releasever` an empty root has no release version
//!   and the transaction fails rather than warning.

use super::InstalledPackage;

pub use super::version_matches;

/// The `rpm --queryformat` whose output [`parse_query`] reads: name, epoch
/// (0 when none), version, release and architecture, tab-separated, one
/// package per line. Pass it as one argument, unescaped: rpm itself turns
/// the `\t` and `\n` sequences into a tab and a newline.
pub const QUERY_FORMAT: &str = "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\n";

/// The pseudo-package under which rpm records each imported signing key.
const GPG_PUBKEY: &str = "gpg-pubkey";

/// What is wrong with a line of `rpm -qa --qf QUERY_FORMAT` output
/// (1-based line numbers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not five tab-separated fields.
    #[error("line {line}: expected 5 tab-separated fields, found {found} in {text:?}")]
    FieldCount {
        line: usize,
        found: usize,
        text: String,
    },
    /// The name, version, release or architecture is empty.
    #[error("line {line}: empty {field} in {text:?}")]
    EmptyField {
        line: usize,
        field: &'static str,
        text: String,
    },
    /// The epoch is not a number.
    #[error("line {line}: epoch {epoch:?} is not a number")]
    BadEpoch { line: usize, epoch: String },
}

impl ParseError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            ParseError::FieldCount { line, .. }
            | ParseError::EmptyField { line, .. }
            | ParseError::BadEpoch { line, .. } => *line,
        }
    }
}

/// Parses the output of `rpm -qa --qf QUERY_FORMAT` into one entry per
/// installed package, in output order (rpm's database order, not sorted).
///
/// The version is presented as `[epoch:]version-release`, leaving out a zero
/// epoch, the way dnf prints it (`1.0-1`, `2:3.1.4-5.el9`). Every entry is
/// `installed`: rpm lists nothing else. Several entries may share a name
/// (install-only packages such as `kernel-core`, or multilib `i686` and
/// `x86_64` builds). Blank lines are skipped; `gpg-pubkey` entries are left
/// out.
pub fn parse_query(text: &str) -> Result<Vec<InstalledPackage>, ParseError> {
    let mut packages = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        let mut fields = raw.split('\t');
        let (Some(name), Some(epoch), Some(version), Some(release), Some(arch), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(ParseError::FieldCount {
                line,
                found: raw.split('\t').count(),
                text: excerpt(raw),
            });
        };
        for (value, field) in [
            (name, "name"),
            (version, "version"),
            (release, "release"),
            (arch, "architecture"),
        ] {
            if value.is_empty() {
                return Err(ParseError::EmptyField {
                    line,
                    field,
                    text: excerpt(raw),
                });
            }
        }
        let epoch: u64 = epoch.parse().map_err(|_| ParseError::BadEpoch {
            line,
            epoch: excerpt(epoch),
        })?;
        if name == GPG_PUBKEY {
            continue;
        }
        let version = if epoch == 0 {
            format!("{version}-{release}")
        } else {
            format!("{epoch}:{version}-{release}")
        };
        packages.push(InstalledPackage {
            name: name.to_owned(),
            version,
            arch: arch.to_owned(),
            installed: true,
        });
    }
    Ok(packages)
}

/// At most 80 characters of an offending line, for an error message.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rpm --root R --dbpath /var/lib/rpm -qa --qf QUERY_FORMAT` after the
    /// dnf command in the module documentation installed both test packages
    /// from `build-test-rpms.sh` into an empty installroot R.
    const INSTALLROOT: &str = include_str!("../../../tests/fixtures/rpm/qa-installroot.txt");
    /// The same query on a copy of that root after `rpm -i` of a hand-built
    /// `trueup-test-epoch-2:3.1.4-5.el9.noarch` (spec with `Epoch: 2`) and
    /// `rpm --import` of a throwaway OpenPGP key (the `gpg-pubkey` entry).
    const EPOCH_PUBKEY: &str = include_str!("../../../tests/fixtures/rpm/qa-epoch-pubkey.txt");

    fn package(name: &str, version: &str, arch: &str) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            installed: true,
        }
    }

    #[test]
    fn query_format_is_what_the_fixtures_were_captured_with() {
        assert_eq!(
            QUERY_FORMAT,
            r"%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n"
        );
    }

    #[test]
    fn packages_installed_by_dnf() {
        assert_eq!(
            parse_query(INSTALLROOT),
            Ok(vec![
                package("trueup-test-b", "1.0-1", "noarch"),
                package("trueup-test-a", "1.0-1", "noarch"),
            ])
        );
    }

    #[test]
    fn epoch_shown_when_nonzero_and_signing_keys_left_out() {
        assert_eq!(
            parse_query(EPOCH_PUBKEY),
            Ok(vec![
                package("trueup-test-b", "1.0-1", "noarch"),
                package("trueup-test-a", "1.0-1", "noarch"),
                package("trueup-test-epoch", "2:3.1.4-5.el9", "noarch"),
            ])
        );
        assert!(EPOCH_PUBKEY.contains("gpg-pubkey\t0\t"));
    }

    #[test]
    fn pins_match_presented_versions() {
        let packages = parse_query(EPOCH_PUBKEY).expect("parses");
        let epoch = packages
            .iter()
            .find(|p| p.name == "trueup-test-epoch")
            .expect("epoch package");
        assert!(version_matches("3.1.*", &epoch.version));
        assert!(version_matches("2:3.1.4-5.el9", &epoch.version));
        assert!(!version_matches("3.1.4", &epoch.version));
    }

    #[test]
    fn empty_output_is_no_packages() {
        assert_eq!(parse_query(""), Ok(vec![]));
        assert_eq!(parse_query("\n\n"), Ok(vec![]));
    }

    #[test]
    fn errors_name_the_line() {
        let good = "a\t0\t1\t1\tnoarch\n";
        let cases: &[(String, usize)] = &[
            (format!("{good}a 0 1 1 noarch\n"), 2),
            (format!("{good}{good}a\t0\t1\t1\n"), 3),
            (format!("a\t0\t1\t1\tnoarch\textra\n{good}"), 1),
            (format!("{good}\n\ta\t1\t1\tnoarch\n"), 3),
            (format!("{good}a\t(none)\t1\t1\tnoarch\n"), 2),
            (format!("{good}a\t-1\t1\t1\tnoarch\n"), 2),
            (format!("{good}a\t0\t\t1\tnoarch\n"), 2),
            (format!("{good}a\t0\t1\t1\t\n"), 2),
        ];
        for (text, line) in cases {
            let err = parse_query(text).expect_err(text);
            assert_eq!(err.line(), *line, "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn no_panic_on_arbitrary_input() {
        for end in 0..=EPOCH_PUBKEY.len() {
            if let Some(prefix) = EPOCH_PUBKEY.get(..end) {
                let _ = parse_query(prefix);
            }
        }
        for junk in ["\0", "\t\t\t\t", "é\t99999999999999999999999\tv\tr\ta"] {
            let _ = parse_query(junk);
        }
    }
}
