//! Parser for the installed-package database (dpkg).
//!
//! The apt backend observes packages by reading `/var/lib/dpkg/status`
//! directly rather than running `dpkg-query`: one read, no process, and the
//! same answer. The file is a list of RFC 822-like stanzas separated by
//! blank lines; a line starting with a space or tab continues the previous
//! field. Only `Package`, `Status`, `Version` and `Architecture` matter
//! here; every other field is skipped without allocating.
//!
//! A stanza describes a package dpkg *knows about*, which is not the same as
//! one that is installed: `Status: deinstall ok config-files` is a removed
//! package whose configuration files remain, `install ok half-configured` an
//! installation whose `postinst` failed. See [`InstalledPackage::installed`]
//! and [`is_installed_status`] for what counts.

use std::path::{Path, PathBuf};

pub use super::{InstalledPackage, version_matches};

/// Where dpkg keeps its status database on a Debian host.
pub const STATUS_PATH: &str = "/var/lib/dpkg/status";

/// What is wrong with a dpkg status file, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line that is neither blank, a continuation, nor `Field: value`.
    #[error("line {line}: expected `Field: value`, found {found:?}")]
    NotAField { line: usize, found: String },
    /// A continuation line (leading space) with no field before it.
    #[error("line {line}: continuation line outside a field")]
    StrayContinuation { line: usize },
    /// The same field twice in one stanza.
    #[error("line {line}: duplicate {field} field")]
    DuplicateField { line: usize, field: &'static str },
    /// A stanza without `Package`; `line` is where the stanza starts.
    #[error("line {line}: stanza has no Package field")]
    MissingPackage { line: usize },
    /// A stanza without `Status`; `line` is where the stanza starts.
    #[error("line {line}: package {package}: no Status field")]
    MissingStatus { line: usize, package: String },
    /// A `Status` that is not `WANT FLAG STATUS` with words dpkg uses.
    #[error("line {line}: package {package}: unrecognised Status {status:?}")]
    BadStatus {
        line: usize,
        package: String,
        status: String,
    },
    /// An installed package lacks a field dpkg always writes for one;
    /// `line` is where the stanza starts.
    #[error("line {line}: installed package {package} has no {field} field")]
    MissingField {
        line: usize,
        package: String,
        field: &'static str,
    },
}

impl ParseError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            ParseError::NotAField { line, .. }
            | ParseError::StrayContinuation { line }
            | ParseError::DuplicateField { line, .. }
            | ParseError::MissingPackage { line }
            | ParseError::MissingStatus { line, .. }
            | ParseError::BadStatus { line, .. }
            | ParseError::MissingField { line, .. } => *line,
        }
    }
}

/// Why the status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading dpkg status {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing dpkg status {}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// Reads and parses a dpkg status file (normally [`STATUS_PATH`], under the
/// `--root` prefix when one is given).
pub fn read_status(path: &Path) -> Result<Vec<InstalledPackage>, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_status(&text).map_err(|source| ReadError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses the text of a dpkg status file, in one pass, into one entry per
/// stanza, in file order.
///
/// Every stanza yields an entry, installed or not, so a caller can tell a
/// package that was never there from one removed with its configuration
/// kept. `version` and `arch` are empty when a not-installed stanza omits
/// them; an installed one without them is an error, as it is for dpkg.
pub fn parse_status(text: &str) -> Result<Vec<InstalledPackage>, ParseError> {
    let mut packages = Vec::new();
    let mut stanza = Stanza::default();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.is_empty() {
            if let Some(package) = stanza.finish()? {
                packages.push(package);
            }
            continue;
        }
        // As in dpkg, only an empty line ends a stanza: a line of spaces
        // inside one continues the field before it, and between stanzas it
        // is skipped.
        if raw.starts_with([' ', '\t']) {
            if stanza.in_field || (stanza.start == 0 && raw.trim().is_empty()) {
                continue;
            }
            return Err(ParseError::StrayContinuation { line });
        }
        if stanza.start == 0 {
            stanza.start = line;
        }
        let Some((name, value)) = raw.split_once(':') else {
            return Err(ParseError::NotAField {
                line,
                found: excerpt(raw),
            });
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(ParseError::NotAField {
                line,
                found: excerpt(raw),
            });
        }
        stanza.in_field = true;
        let value = value.trim();
        let (slot, field) = if name.eq_ignore_ascii_case("Package") {
            (&mut stanza.package, "Package")
        } else if name.eq_ignore_ascii_case("Status") {
            (&mut stanza.status, "Status")
        } else if name.eq_ignore_ascii_case("Version") {
            (&mut stanza.version, "Version")
        } else if name.eq_ignore_ascii_case("Architecture") {
            (&mut stanza.arch, "Architecture")
        } else {
            continue;
        };
        if slot.replace((value, line)).is_some() {
            return Err(ParseError::DuplicateField { line, field });
        }
    }
    if let Some(package) = stanza.finish()? {
        packages.push(package);
    }
    Ok(packages)
}

/// Whether a dpkg `Status` value (`WANT FLAG STATUS`) describes a package
/// whose files are unpacked and configured.
///
/// The third word decides: `installed`, and also `triggers-pending` and
/// `triggers-awaited`, which are configured packages waiting for trigger
/// processing (dpkg counts them as satisfying dependencies). `config-files`,
/// `half-installed`, `unpacked`, `half-configured` and `not-installed` are
/// not installed. The first word is only a selection: `hold ok installed`
/// and `deinstall ok installed` are both installed. A `reinstreq` flag means
/// dpkg itself considers the package broken, so it is not installed.
///
/// Returns `None` when the value is not a valid status.
pub fn is_installed_status(status: &str) -> Option<bool> {
    let mut words = status.split_ascii_whitespace();
    let (Some(want), Some(flag), Some(state), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    if !matches!(want, "unknown" | "install" | "hold" | "deinstall" | "purge")
        || !matches!(flag, "ok" | "reinstreq")
    {
        return None;
    }
    let configured = match state {
        "installed" | "triggers-pending" | "triggers-awaited" => true,
        "not-installed" | "config-files" | "half-installed" | "unpacked" | "half-configured" => {
            false
        }
        _ => return None,
    };
    Some(configured && flag == "ok")
}

/// The fields of the stanza being read, borrowed from the input, each with
/// the line it was on.
#[derive(Default)]
struct Stanza<'a> {
    /// First line of the stanza; 0 before any line has been seen.
    start: usize,
    /// Whether a field line has been seen, so a continuation is legal.
    in_field: bool,
    package: Option<(&'a str, usize)>,
    status: Option<(&'a str, usize)>,
    version: Option<(&'a str, usize)>,
    arch: Option<(&'a str, usize)>,
}

impl Stanza<'_> {
    /// Turns the collected fields into an entry and resets for the next
    /// stanza; `None` when no stanza was open (consecutive blank lines).
    fn finish(&mut self) -> Result<Option<InstalledPackage>, ParseError> {
        let stanza = std::mem::take(self);
        if stanza.start == 0 {
            return Ok(None);
        }
        let line = stanza.start;
        let Some((name, _)) = stanza.package.filter(|(name, _)| !name.is_empty()) else {
            return Err(ParseError::MissingPackage { line });
        };
        let Some((status, status_line)) = stanza.status else {
            return Err(ParseError::MissingStatus {
                line,
                package: name.to_owned(),
            });
        };
        let Some(installed) = is_installed_status(status) else {
            return Err(ParseError::BadStatus {
                line: status_line,
                package: name.to_owned(),
                status: excerpt(status),
            });
        };
        let field = |value: Option<(&str, usize)>, field: &'static str| match value {
            Some((value, _)) if !value.is_empty() => Ok(value.to_owned()),
            _ if installed => Err(ParseError::MissingField {
                line,
                package: name.to_owned(),
                field,
            }),
            _ => Ok(String::new()),
        };
        Ok(Some(InstalledPackage {
            name: name.to_owned(),
            version: field(stanza.version, "Version")?,
            arch: field(stanza.arch, "Architecture")?,
            installed,
        }))
    }
}

/// At most 80 characters of an offending line, for an error message.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This build machine's own `/var/lib/dpkg/status` (Debian 12).
    const DEBIAN12: &str = include_str!("../../../tests/fixtures/dpkg/status-debian12");
    /// A scratch dpkg root (`dpkg --root=DIR`) driven into every state that
    /// can be reached on purpose: tiny packages built with `dpkg-deb -b`,
    /// then `-r` (config-files), `--set-selections` (hold, deinstall),
    /// `--unpack` (unpacked), a postinst that exits 1 (half-configured) and
    /// `--no-triggers --unpack` of a trigger activator (triggers-pending).
    const STATES: &str = include_str!("../../../tests/fixtures/dpkg/status-states");
    /// `dpkg-query --admindir=DIR -W -f='${Package}\t${Version}\t${Architecture}\t${Status}\n'`
    /// over each fixture copied to DIR/status: dpkg's own reading of it.
    const DEBIAN12_QUERY: &str = include_str!("../../../tests/fixtures/dpkg/status-debian12.query");
    const STATES_QUERY: &str = include_str!("../../../tests/fixtures/dpkg/status-states.query");

    /// Parses a `.query` fixture into (name, version, arch, status), sorted
    /// as dpkg-query sorts.
    fn dpkg_query(text: &str) -> Vec<(String, String, String, String)> {
        let mut rows: Vec<_> = text
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 4, "bad query fixture line {line:?}");
                (
                    fields[0].to_owned(),
                    fields[1].to_owned(),
                    fields[2].to_owned(),
                    fields[3].to_owned(),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    fn find<'a>(packages: &'a [InstalledPackage], name: &str) -> &'a InstalledPackage {
        packages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not parsed"))
    }

    #[test]
    fn real_status_file_agrees_with_dpkg_query() {
        let packages = parse_status(DEBIAN12).expect("real status file parses");
        let expected = dpkg_query(DEBIAN12_QUERY);
        assert_eq!(packages.len(), expected.len());
        let mut got: Vec<_> = packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone(), p.arch.clone()))
            .collect();
        got.sort();
        let want: Vec<_> = expected
            .iter()
            .map(|(n, v, a, _)| (n.clone(), v.clone(), a.clone()))
            .collect();
        assert_eq!(got, want);
        assert!(packages.iter().all(|p| p.installed));
        let dpkg = find(&packages, "dpkg");
        assert_eq!(dpkg.arch, "amd64");
        assert!(dpkg.version.starts_with("1.21."));
    }

    #[test]
    fn every_state_agrees_with_dpkg_query() {
        let packages = parse_status(STATES).expect("states fixture parses");
        let expected = dpkg_query(STATES_QUERY);
        assert_eq!(packages.len(), expected.len());
        for (name, version, arch, status) in &expected {
            let package = find(&packages, name);
            assert_eq!(&package.version, version, "{name}");
            assert_eq!(&package.arch, arch, "{name}");
            assert_eq!(
                package.installed,
                is_installed_status(status) == Some(true),
                "{name}"
            );
        }
    }

    #[test]
    fn installed_means_configured_whatever_the_selection() {
        let packages = parse_status(STATES).expect("states fixture parses");
        let installed = |name| find(&packages, name).installed;
        assert!(installed("trueup-plain"));
        assert!(installed("trueup-held"));
        assert!(installed("trueup-deselected"));
        assert!(installed("trueup-trig"));
        assert!(!installed("trueup-conf"));
        assert!(!installed("trueup-unpacked"));
        assert!(!installed("trueup-failing"));
        assert!(!installed("trueup-activator"));
        // A removed package keeps the version of its configuration files.
        assert_eq!(
            find(&packages, "trueup-conf").version,
            "2:7.88.1-10+deb12u5"
        );
    }

    #[test]
    fn status_words() {
        assert_eq!(is_installed_status("install ok installed"), Some(true));
        assert_eq!(is_installed_status("hold ok installed"), Some(true));
        assert_eq!(
            is_installed_status("install ok triggers-awaited"),
            Some(true)
        );
        assert_eq!(
            is_installed_status("deinstall ok config-files"),
            Some(false)
        );
        assert_eq!(
            is_installed_status("install reinstreq half-installed"),
            Some(false)
        );
        assert_eq!(
            is_installed_status("install reinstreq installed"),
            Some(false)
        );
        assert_eq!(is_installed_status("purge ok not-installed"), Some(false));
        assert_eq!(is_installed_status("install ok"), None);
        assert_eq!(is_installed_status("install ok installed extra"), None);
        assert_eq!(is_installed_status("install ok sideways"), None);
        assert_eq!(is_installed_status("want ok installed"), None);
        assert_eq!(is_installed_status(""), None);
    }

    #[test]
    fn not_installed_stanza_may_lack_version_and_architecture() {
        let text = "Package: gone\nStatus: purge ok not-installed\nPriority: optional\n";
        assert_eq!(
            parse_status(text),
            Ok(vec![InstalledPackage {
                name: "gone".into(),
                version: String::new(),
                arch: String::new(),
                installed: false,
            }])
        );
    }

    #[test]
    fn layout_tolerated() {
        // Several blank lines, a line of blanks between stanzas, CRLF,
        // lower-case field names, no trailing newline.
        let text = "\n\npackage: a\r\nstatus: install ok installed\r\nversion: 1\r\narchitecture: all\r\n\r\n \t\nPackage: b\nStatus: install ok installed\nVersion: 2\nArchitecture: amd64\nDescription: x\n y\n .\n\tz";
        let packages = parse_status(text).expect("parses");
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0].version, "1");
        assert_eq!(packages[1].arch, "amd64");
        assert_eq!(parse_status(""), Ok(vec![]));
        assert_eq!(parse_status("\n\n\n"), Ok(vec![]));
        // Inside a stanza a line of blanks continues a field, as in dpkg; it
        // does not end the stanza.
        let text = "Package: a\nStatus: install ok installed\nDescription: x\n \nVersion: 1\nArchitecture: all\n";
        assert_eq!(parse_status(text).map(|p| p.len()), Ok(1));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize)] = &[
            (" continued\n", 1),
            ("Package: a\nno colon here\n", 2),
            ("Package: a\n: empty name\n", 2),
            (
                "Package: a\nStatus: purge ok not-installed\n\nVersion: 1\n",
                4,
            ),
            ("Package: a\nStatus: install ok installed\nPackage: b\n", 3),
            ("Package: a\nVersion: 1\n", 1),
            ("Package: a\nVersion: 1\nStatus: install ok\n", 3),
            (
                "\nPackage: a\nStatus: install ok installed\nArchitecture: all\n",
                2,
            ),
            (
                "\n\nPackage: a\nStatus: install ok installed\nVersion: 1\n",
                3,
            ),
            ("Package:\nStatus: install ok installed\n", 1),
        ];
        for &(text, line) in cases {
            let err = parse_status(text).expect_err(text);
            assert_eq!(err.line(), line, "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn no_panic_on_arbitrary_input() {
        // Every prefix and every single-byte corruption of a real stanza.
        let stanza = DEBIAN12.split("\n\n").next().unwrap_or_default();
        for end in 0..=stanza.len() {
            if let Some(prefix) = stanza.get(..end) {
                let _ = parse_status(prefix);
            }
        }
        for junk in ["\0", "\u{feff}", "::::", "\t:", "é: è", "Package: \u{0}"] {
            let _ = parse_status(junk);
            let _ = parse_status(&format!("{stanza}\n{junk}"));
        }
    }

    #[test]
    fn reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status");
        std::fs::write(&path, STATES).expect("write");
        assert_eq!(read_status(&path).expect("reads").len(), 8);
        let missing = read_status(&dir.path().join("nope")).expect_err("missing file");
        assert!(missing.to_string().contains("nope"));
    }
}
