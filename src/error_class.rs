//! Whether a failure is worth retrying soon, needs a person, or is a
//! broken configuration, told by the backends' typed errors (source,
//! trust, the process runner, and through it the package manager, systemd
//! and the account tools: `resource::BackendError`) so the agent can act
//! on it: back off and
//! retry a transient failure, wait for the next interval after a
//! permanent one (retrying soon cannot help; a push or an operator
//! must), and exit 78 (EX_CONFIG, which systemd does not restart) on a
//! configuration that cannot work.

use crate::resource::package::dpkg;
use crate::resource::tool::ToolError;
use crate::source::transport::SourceError;
use crate::source::trust::TrustError;

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying soon: the network, a server down, a held dpkg lock,
    /// a tool killed as hung.
    Transient,
    /// Retrying will fail the same way until something outside the host
    /// changes: an untrusted commit, a missing branch, a refused key.
    Permanent,
    /// The agent's own configuration cannot work (a credential file it
    /// names is missing, a branch template that is not a branch name).
    Configuration,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Configuration => "configuration",
        }
    }
}

/// Errors that know their class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::Unreachable { .. }
            | SourceError::Remote { .. }
            | SourceError::Cache { .. } => ErrorClass::Transient,
            SourceError::Auth { .. }
            | SourceError::HostKey { .. }
            | SourceError::Tls { .. }
            | SourceError::MissingBranch { .. }
            | SourceError::NotCached { .. } => ErrorClass::Permanent,
            SourceError::Credentials { .. } => ErrorClass::Configuration,
        }
    }
}

impl Classify for TrustError {
    fn class(&self) -> ErrorClass {
        match self {
            // The tool could not run or read its input: the machine, not
            // the commit, may be at fault.
            TrustError::Tool { .. } => ErrorClass::Transient,
            // A commit signed in a way trust is not set up for is the
            // commit's doing: whatever is pushed must never stop the agent.
            TrustError::Unsigned { .. }
            | TrustError::UnknownKey { .. }
            | TrustError::BadSignature { .. }
            | TrustError::NotConfigured { .. } => ErrorClass::Permanent,
        }
    }
}

impl Classify for ToolError {
    fn class(&self) -> ErrorClass {
        match self {
            ToolError::Spawn { source, .. } => io_class(source),
            ToolError::TimedOut { .. } => ErrorClass::Transient,
            ToolError::Failed { output, .. } => classify_tool_output(output),
        }
    }
}

impl Classify for dpkg::ReadError {
    fn class(&self) -> ErrorClass {
        match self {
            dpkg::ReadError::Io { source, .. } => io_class(source),
            // dpkg replaces the file by a rename, so a reader never sees
            // half of it: text it cannot parse stays so.
            dpkg::ReadError::Parse { .. } => ErrorClass::Permanent,
        }
    }
}

/// A file or program that is not there, or not ours to use, stays so;
/// other I/O failures (out of descriptors, interrupted) may pass.
fn io_class(e: &std::io::Error) -> ErrorClass {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            ErrorClass::Permanent
        }
        _ => ErrorClass::Transient,
    }
}

/// A failing tool's own words, classified: another apt, dpkg or dnf
/// holding its lock, another useradd holding `/etc/passwd`'s, or the
/// network, are transient; anything else (an unknown package, a pin
/// nothing matches, a held package, a unit that fails to start) fails the
/// same way next time.
pub fn classify_tool_output(output: &str) -> ErrorClass {
    const TRANSIENT: &[&str] = &[
        // apt-get and dpkg (Debian 12), with DPkg::Lock::Timeout run out.
        "could not get lock",
        "unable to acquire the dpkg frontend lock",
        "unable to lock the administration directory",
        "dpkg frontend lock",
        // apt-get's network failures.
        "temporary failure resolving",
        "failed to fetch",
        "could not connect to",
        "connection timed out",
        "connection refused",
        "network is unreachable",
        // dnf.
        "waiting for process with pid",
        "cannot download repomd.xml",
        "curl error",
        "failed to download metadata",
        // shadow-utils (useradd, groupadd, …) when another holds the lock
        // on /etc/passwd, /etc/group or their shadows.
        "try again later",
    ];
    let lower = output.to_ascii_lowercase();
    if TRANSIENT.iter().any(|t| lower.contains(t)) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failed(output: &str) -> ToolError {
        ToolError::Failed {
            command: "apt-get install -y hello".into(),
            status: "exit status 100".into(),
            output: output.into(),
        }
    }

    #[test]
    fn a_held_dpkg_lock_and_the_network_are_transient() {
        // apt-get's words on Debian 12.
        for words in [
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4711 (unattended-upgr)",
            "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?",
            "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'",
            "Error: Failed to download metadata for repo 'appstream': Cannot download repomd.xml: Curl error (6)",
        ] {
            assert_eq!(failed(words).class(), ErrorClass::Transient, "{words}");
        }
    }

    #[test]
    fn a_package_nobody_offers_is_permanent() {
        for words in [
            "E: Unable to locate package trueup-nosuch",
            "E: Version '9.9' for 'hello' was not found",
            "Error: Unable to find a match: trueup-test-a-2.*",
        ] {
            assert_eq!(failed(words).class(), ErrorClass::Permanent, "{words}");
        }
    }

    /// What a backend returns: the tool's message as it was, and its class.
    #[test]
    fn backend_errors_keep_the_message_and_take_the_class() {
        use crate::resource::BackendError;
        let lock = failed(
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4711 (unattended-upgr)",
        );
        let message = crate::resource::tool::chain(&lock);
        let e = BackendError::from(lock);
        assert_eq!(e.message, message);
        assert_eq!(e.to_string(), message);
        assert_eq!(e.class(), ErrorClass::Transient);
        let missing = BackendError::from(failed("E: Unable to locate package trueup-nosuch"));
        assert_eq!(missing.class(), ErrorClass::Permanent);
        // Context goes in front of the message; the class stays.
        let e = e.context("systemctl daemon-reload");
        assert!(e.message.starts_with("systemctl daemon-reload: `apt-get"));
        assert_eq!(e.class, ErrorClass::Transient);
    }

    #[test]
    fn a_held_account_database_lock_is_transient() {
        // shadow-utils 4.13 (Debian 12) when another useradd holds the lock.
        for words in [
            "useradd: cannot lock /etc/passwd; try again later.",
            "groupadd: cannot lock /etc/group; try again later.",
        ] {
            assert_eq!(failed(words).class(), ErrorClass::Transient, "{words}");
        }
        let exists = failed("useradd: user 'app' already exists");
        assert_eq!(exists.class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_dpkg_status_that_does_not_parse_or_is_missing_is_permanent() {
        let path = std::path::PathBuf::from("/var/lib/dpkg/status");
        let io = |kind| dpkg::ReadError::Io {
            path: path.clone(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            io(std::io::ErrorKind::NotFound).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            io(std::io::ErrorKind::Interrupted).class(),
            ErrorClass::Transient
        );
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(&status, "not a field\n").unwrap();
        let parse = dpkg::read_status(&status).unwrap_err();
        assert!(matches!(parse, dpkg::ReadError::Parse { .. }), "{parse}");
        assert_eq!(parse.class(), ErrorClass::Permanent);
        let missing = dpkg::read_status(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.class(), ErrorClass::Permanent);
    }

    #[test]
    fn a_hung_tool_is_transient_and_a_missing_one_permanent() {
        let hung = ToolError::TimedOut {
            command: "apt-get install -y hello".into(),
            after: Duration::from_secs(1800),
            output: "Unpacking hello".into(),
        };
        assert_eq!(hung.class(), ErrorClass::Transient);
        let missing = ToolError::Spawn {
            program: "dnf".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(missing.class(), ErrorClass::Permanent);
        let busy = ToolError::Spawn {
            program: "dnf".into(),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        };
        assert_eq!(busy.class(), ErrorClass::Transient);
    }

    #[test]
    fn source_errors_by_kind() {
        let url = || "ssh://git.example.com/hosts.git".to_string();
        let d = || "x".to_string();
        let cases = [
            (
                SourceError::Unreachable {
                    url: url(),
                    detail: d(),
                },
                ErrorClass::Transient,
            ),
            (
                SourceError::Remote {
                    url: url(),
                    detail: d(),
                },
                ErrorClass::Transient,
            ),
            (
                SourceError::Cache {
                    path: d(),
                    detail: d(),
                },
                ErrorClass::Transient,
            ),
            (
                SourceError::Auth {
                    url: url(),
                    detail: d(),
                },
                ErrorClass::Permanent,
            ),
            (
                SourceError::HostKey {
                    url: url(),
                    detail: d(),
                },
                ErrorClass::Permanent,
            ),
            (
                SourceError::Tls {
                    url: url(),
                    detail: d(),
                },
                ErrorClass::Permanent,
            ),
            (
                SourceError::MissingBranch {
                    url: url(),
                    branch: "hosts/web-01".into(),
                },
                ErrorClass::Permanent,
            ),
            (
                SourceError::NotCached {
                    branch: d(),
                    path: d(),
                },
                ErrorClass::Permanent,
            ),
            (
                SourceError::Credentials { detail: d() },
                ErrorClass::Configuration,
            ),
        ];
        for (e, class) in cases {
            assert_eq!(e.class(), class, "{e}");
        }
    }

    #[test]
    fn an_untrusted_commit_is_permanent_never_a_configuration_error() {
        let c = || "0123456789abcdef".to_string();
        assert_eq!(
            TrustError::Unsigned { commit: c() }.class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            TrustError::BadSignature {
                commit: c(),
                detail: "x".into()
            }
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            TrustError::UnknownKey {
                commit: c(),
                source_name: "trust.allowed_signers".into(),
                detail: "x".into()
            }
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            TrustError::NotConfigured {
                commit: c(),
                kind: "SSH",
                setting: "trust.allowed_signers"
            }
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            TrustError::Tool {
                commit: c(),
                detail: "gpgv: killed".into()
            }
            .class(),
            ErrorClass::Transient
        );
    }
}
