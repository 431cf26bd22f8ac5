//! Wraps `systemctl show` and parses its output.
//!
//! Service resources observe units with one call,
//! `systemctl show --property=Id,LoadState,ActiveState,SubState,UnitFileState,MainPID -- UNIT...`
//! (built by [`show_args`]), and [`parse_show`] turns the output into one
//! [`UnitState`] per unit. What was seen on systemd 252 (Debian 12), and
//! shapes this module:
//!
//! - One block of `Key=Value` lines per unit, blocks separated by one empty
//!   line, no empty line after the last. Properties come in systemd's order,
//!   not the order asked for (`MainPID` first), and `MainPID` is absent for
//!   units that are not services (sockets, targets, mounts).
//! - Blocks come in argument order, but `Id` is the unit's real name, which
//!   is not always the name asked for: an alias shows its target
//!   (`dbus-org.freedesktop.login1.service` → `systemd-logind.service`), and
//!   a name without a suffix gets `.service`. Match results to requests by
//!   position, never by `Id`.
//! - A unit that does not exist still gets a block: `LoadState=not-found`,
//!   `ActiveState=inactive`, `UnitFileState=` (empty). So does a unit with
//!   a broken file (`LoadState=bad-setting`).
//! - A template name (`getty@.service`) makes systemctl stop with "Unit
//!   name … is neither a valid invocation ID nor unit name", exit 1, after
//!   printing the blocks before it; instances (`getty@tty1.service`) work.
//! - A name starting with `-` (the root mount, `-.mount`) is taken for an
//!   option unless it follows `--`.
//! - `UnitFileState` from `show` is the state of the unit the name resolved
//!   to: an alias shows `enabled`, never `alias` (only `is-enabled` and
//!   `list-unit-files` say `alias`); a unit linked in with `systemctl link`
//!   and then enabled shows `enabled`, and `linked` only while it is not.

use crate::resource::BackendError;

/// The properties [`parse_show`] reads, as `systemctl show --property=`
/// takes them.
pub const SHOW_PROPERTIES: &str = "Id,LoadState,ActiveState,SubState,UnitFileState,MainPID";

/// Arguments for `systemctl` that show `units`, one block each, in order.
pub fn show_args<S: AsRef<str>>(units: &[S]) -> Vec<String> {
    let mut args = vec![
        "show".to_owned(),
        format!("--property={SHOW_PROPERTIES}"),
        "--".to_owned(),
    ];
    args.extend(units.iter().map(|unit| unit.as_ref().to_owned()));
    args
}

/// A unit's state as `systemctl show` reports it. The fields hold systemd's
/// words verbatim, so a state this code has never seen is still shown to the
/// operator as systemd wrote it; the methods interpret them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// The unit's real name (see the module documentation on aliases).
    pub id: String,
    /// `loaded`, `not-found`, `masked`, `bad-setting`, `error`, ….
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`,
    /// `reloading`, ….
    pub active_state: String,
    /// Type-specific detail: `running`, `exited`, `dead`, `start`, ….
    pub sub_state: String,
    /// `enabled`, `enabled-runtime`, `disabled`, `static`, `masked`,
    /// `linked`, `indirect`, `generated`, `transient`, …; empty when the unit
    /// has no unit file (not found, or synthesised like `-.mount`).
    pub unit_file_state: String,
    /// The main process of a running service; `None` when there is none
    /// (systemd prints 0) or the unit is not a service.
    pub main_pid: Option<u32>,
}

impl UnitState {
    /// Whether systemd knows the unit (it has a unit file, is masked, or is
    /// transient/synthesised); false for `LoadState=not-found`.
    pub fn exists(&self) -> bool {
        self.load_state != "not-found"
    }

    /// Whether the unit is started: `ActiveState` is `active` or
    /// `reloading`. This includes a oneshot service with `RemainAfterExit=`
    /// that ran (`active`/`exited`): starting it again would do nothing.
    /// It excludes `activating`, which is also how a crash-looping service
    /// waiting to restart looks (`activating`/`auto-restart`), as well as
    /// `deactivating`, `inactive` and `failed`.
    pub fn is_running(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }

    /// Whether the unit failed (`ActiveState=failed`).
    pub fn is_failed(&self) -> bool {
        self.active_state == "failed"
    }

    /// Whether the unit is enabled, in the sense of `systemctl is-enabled`
    /// exiting 0: `enabled`, `enabled-runtime`, `alias`, `indirect`, and the
    /// states that need no enabling, `static` and `generated` (see
    /// [`Self::is_static`]).
    ///
    /// `linked` and `linked-runtime` are not enabled: on systemd 252 a unit
    /// linked in with `systemctl link` and also enabled reports `enabled`,
    /// so `linked` means linked and nothing more, and `is-enabled` exits 1
    /// for it. `transient` is not enabled either (it cannot be; `is-enabled`
    /// exits 1 there too). Masked units are not enabled; see
    /// [`Self::is_masked`].
    pub fn is_enabled(&self) -> bool {
        matches!(
            self.unit_file_state.as_str(),
            "enabled" | "enabled-runtime" | "alias" | "indirect" | "static" | "generated"
        )
    }

    /// Whether `systemctl enable`/`disable` cannot change this unit, because
    /// there is no `[Install]` section to act on: `static`, `generated`
    /// (made by a generator), `transient` (made at run time), or no unit
    /// file at all. Callers should not report enablement drift for such a
    /// unit; it starts when something else pulls it in.
    pub fn is_static(&self) -> bool {
        self.exists()
            && !self.is_masked()
            && matches!(
                self.unit_file_state.as_str(),
                "static" | "generated" | "transient" | ""
            )
    }

    /// Whether the unit is masked (linked to `/dev/null`, permanently or
    /// for this boot): it can be neither started nor enabled until unmasked.
    pub fn is_masked(&self) -> bool {
        self.load_state == "masked"
            || matches!(self.unit_file_state.as_str(), "masked" | "masked-runtime")
    }
}

/// What is wrong with `systemctl show` output, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A non-empty line that is not `Key=Value`.
    #[error("line {line}: expected `Property=value`, found {found:?}")]
    NotAProperty { line: usize, found: String },
    /// The same property twice in one unit's block.
    #[error("line {line}: property {property} repeated in one unit's block")]
    DuplicateProperty { line: usize, property: String },
    /// A block without a property every unit has; `line` is where the block
    /// starts.
    #[error("line {line}: unit block has no {property} property")]
    MissingProperty { line: usize, property: &'static str },
    /// `MainPID` that is not a process ID.
    #[error("line {line}: MainPID {value:?} is not a process ID")]
    BadMainPid { line: usize, value: String },
}

impl ParseError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            ParseError::NotAProperty { line, .. }
            | ParseError::DuplicateProperty { line, .. }
            | ParseError::MissingProperty { line, .. }
            | ParseError::BadMainPid { line, .. } => *line,
        }
    }
}

/// Parses `systemctl show --property=SHOW_PROPERTIES UNIT...` output into one
/// state per block, in output order, which is the order the units were
/// given in (so the n-th state belongs to the n-th unit asked for).
///
/// `Id`, `LoadState`, `ActiveState` and `SubState` are required in every
/// block; `UnitFileState` is empty and `main_pid` `None` when absent.
/// Other properties are ignored, so output of a wider `--property=` list
/// parses too. Empty output yields no units.
pub fn parse_show(text: &str) -> Result<Vec<UnitState>, ParseError> {
    let mut units = Vec::new();
    let mut block = Block::default();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.is_empty() {
            if let Some(unit) = block.finish()? {
                units.push(unit);
            }
            continue;
        }
        if block.start == 0 {
            block.start = line;
        }
        let Some((key, value)) = raw.split_once('=') else {
            return Err(ParseError::NotAProperty {
                line,
                found: excerpt(raw),
            });
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(ParseError::NotAProperty {
                line,
                found: excerpt(raw),
            });
        }
        let slot = match key {
            "Id" => &mut block.id,
            "LoadState" => &mut block.load_state,
            "ActiveState" => &mut block.active_state,
            "SubState" => &mut block.sub_state,
            "UnitFileState" => &mut block.unit_file_state,
            "MainPID" => &mut block.main_pid,
            _ => continue,
        };
        if slot.replace((value, line)).is_some() {
            return Err(ParseError::DuplicateProperty {
                line,
                property: key.to_owned(),
            });
        }
    }
    if let Some(unit) = block.finish()? {
        units.push(unit);
    }
    Ok(units)
}

/// The properties of the block being read, borrowed from the input, each
/// with its line.
#[derive(Default)]
struct Block<'a> {
    /// First line of the block; 0 before any line has been seen.
    start: usize,
    id: Option<(&'a str, usize)>,
    load_state: Option<(&'a str, usize)>,
    active_state: Option<(&'a str, usize)>,
    sub_state: Option<(&'a str, usize)>,
    unit_file_state: Option<(&'a str, usize)>,
    main_pid: Option<(&'a str, usize)>,
}

impl Block<'_> {
    /// Turns the collected properties into a state and resets for the next
    /// block; `None` when no block was open.
    fn finish(&mut self) -> Result<Option<UnitState>, ParseError> {
        let block = std::mem::take(self);
        if block.start == 0 {
            return Ok(None);
        }
        let line = block.start;
        let required = |value: Option<(&str, usize)>, property| match value {
            Some((value, _)) if !value.is_empty() => Ok(value.to_owned()),
            _ => Err(ParseError::MissingProperty { line, property }),
        };
        let main_pid = match block.main_pid {
            None => None,
            Some((value, pid_line)) => match value.parse::<u32>() {
                Ok(0) => None,
                Ok(pid) => Some(pid),
                Err(_) => {
                    return Err(ParseError::BadMainPid {
                        line: pid_line,
                        value: excerpt(value),
                    });
                }
            },
        };
        Ok(Some(UnitState {
            id: required(block.id, "Id")?,
            load_state: required(block.load_state, "LoadState")?,
            active_state: required(block.active_state, "ActiveState")?,
            sub_state: required(block.sub_state, "SubState")?,
            unit_file_state: block
                .unit_file_state
                .map(|(value, _)| value.to_owned())
                .unwrap_or_default(),
            main_pid,
        }))
    }
}

/// At most 80 characters of an offending line, for an error message.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Arguments for `systemctl --root R list-unit-files` of `units`: how
/// enablement is observed under another root, where `show` is refused
/// ("Verb 'show' cannot be used with --root="). Output is sorted by name,
/// not in argument order, and leaves out units that do not exist (exit 1
/// with no output when none does).
pub fn list_unit_files_args<S: AsRef<str>>(root: &std::path::Path, units: &[S]) -> Vec<String> {
    let mut args = vec![
        format!("--root={}", root.display()),
        "list-unit-files".to_owned(),
        "--no-legend".to_owned(),
        "--no-pager".to_owned(),
        "--".to_owned(),
    ];
    args.extend(units.iter().map(|unit| unit.as_ref().to_owned()));
    args
}

/// Parses `systemctl list-unit-files --no-legend` output (`NAME STATE
/// PRESET` per line) into name → unit file state.
pub fn parse_list_unit_files(
    text: &str,
) -> Result<std::collections::BTreeMap<String, String>, ParseError> {
    let mut out = std::collections::BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let mut words = raw.split_whitespace();
        match (words.next(), words.next()) {
            (Some(name), Some(state)) => {
                out.insert(name.to_owned(), state.to_owned());
            }
            _ => {
                return Err(ParseError::NotAProperty {
                    line: index + 1,
                    found: excerpt(raw),
                });
            }
        }
    }
    Ok(out)
}

/// A unit's state as far as `list-unit-files` tells it: enablement and
/// masking; whether it runs is unknown (`ActiveState=unknown`).
pub fn state_from_unit_file(name: &str, unit_file_state: Option<&str>) -> UnitState {
    let load_state = match unit_file_state {
        None => "not-found",
        Some(s) if s.starts_with("masked") => "masked",
        Some(_) => "loaded",
    };
    UnitState {
        id: name.to_owned(),
        load_state: load_state.to_owned(),
        active_state: "unknown".to_owned(),
        sub_state: "unknown".to_owned(),
        unit_file_state: unit_file_state.unwrap_or_default().to_owned(),
        main_pid: None,
    }
}

/// systemd through `systemctl`, for the system under `root`: the running
/// manager when `root` is `/`, `systemctl --root` otherwise.
pub struct Systemctl {
    root: std::path::PathBuf,
}

impl Systemctl {
    pub fn new(root: &std::path::Path) -> Systemctl {
        Systemctl {
            root: root.to_path_buf(),
        }
    }

    fn live(&self) -> bool {
        self.root == std::path::Path::new("/")
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("systemctl");
        // No pager, no colour, no password agent: trueup is not a terminal.
        cmd.env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .arg("--no-ask-password");
        if !self.live() {
            cmd.arg(format!("--root={}", self.root.display()));
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<(), BackendError> {
        crate::resource::tool::run(self.command().args(args))?;
        Ok(())
    }
}

impl super::UnitControl for Systemctl {
    fn runtime(&self) -> bool {
        self.live()
    }

    fn observe(&self, units: &[&str]) -> Result<Vec<UnitState>, BackendError> {
        use crate::error_class::Classify;
        use crate::resource::tool;
        if units.is_empty() {
            return Ok(vec![]);
        }
        if !self.live() {
            let mut cmd = std::process::Command::new("systemctl");
            cmd.args(list_unit_files_args(&self.root, units))
                .env("SYSTEMD_COLORS", "0");
            // Its status is read here (1 can mean "none of them").
            let out = tool::output(&mut cmd, None)?;
            // Exit 1 with no output at all: none of the units exists.
            let none_found = out.status.code() == Some(1)
                && out.stdout.is_empty()
                && out.stderr.iter().all(u8::is_ascii_whitespace);
            if !out.status.success() && !none_found {
                let e = tool::failed(&cmd, &out);
                return Err(BackendError::new(e.to_string(), e.class()));
            }
            let states =
                parse_list_unit_files(&String::from_utf8_lossy(&out.stdout)).map_err(|e| {
                    BackendError::permanent(format!(
                        "parsing systemctl list-unit-files output: {e}"
                    ))
                })?;
            return Ok(units
                .iter()
                .map(|u| state_from_unit_file(u, states.get(*u).map(String::as_str)))
                .collect());
        }
        let out = tool::run(self.command().args(show_args(units)))?;
        let states = parse_show(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| BackendError::permanent(format!("parsing systemctl show output: {e}")))?;
        if states.len() != units.len() {
            return Err(BackendError::permanent(format!(
                "systemctl show returned {} units for the {} asked for",
                states.len(),
                units.len()
            )));
        }
        Ok(states)
    }

    fn converge(&self, unit: &str, action: &super::ServiceAction) -> Result<(), BackendError> {
        for verb in action.verbs() {
            if matches!(verb, "start" | "stop") && !self.live() {
                return Err(BackendError::permanent(format!(
                    "cannot {verb} {unit} under --root {}",
                    self.root.display()
                )));
            }
            self.run(&[verb, "--", unit])?;
        }
        Ok(())
    }

    fn daemon_reload(&self) -> Result<(), BackendError> {
        if !self.live() {
            return Ok(());
        }
        self.run(&["daemon-reload"])
    }

    fn restart(&self, unit: &str, reload: bool) -> Result<(), BackendError> {
        if !self.live() {
            return Err(BackendError::permanent(format!(
                "cannot restart {unit} under --root {}",
                self.root.display()
            )));
        }
        // try-restart leaves a unit that stopped meanwhile stopped; reload
        // fails plainly for a unit that cannot reload.
        self.run(&[if reload { "reload" } else { "try-restart" }, "--", unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a Debian 12 container (debootstrap minbase + systemd,
    /// booted with `systemd-nspawn --boot`, systemd 252.39) with
    /// `systemctl show --property=SHOW_PROPERTIES -- ` followed by
    /// [`CAPTURED_UNITS`], after creating units in each state by hand
    /// (`enable --now`, `mask`, `enable --runtime`, `link`, an `Alias=`, a
    /// failing `ExecStart`, a relative `ExecStart`, `systemd-run`, …).
    const CAPTURED: &str = include_str!("../../../tests/fixtures/systemctl/show-captured.txt");
    const CAPTURED_UNITS: &[&str] = &[
        "trueup-demo.service",
        "trueup-stopped.service",
        "trueup-fail.service",
        "trueup-masked.service",
        "trueup-runtime.service",
        "trueup-oneshot.service",
        "trueup-slow.service",
        "trueup-badsetting.service",
        "trueup-static.service",
        "trueup-linked.service",
        "trueup-alias.service",
        "trueup-aliased.service",
        "trueup-transient.service",
        "nosuch.service",
        "dbus.service",
        "systemd-journald.socket",
        "multi-user.target",
        "getty@tty1.service",
        "dbus-org.freedesktop.login1.service",
        "-.mount",
    ];
    /// The same container, every unit `list-units --all` and
    /// `list-unit-files` name except templates (which systemctl refuses).
    const CAPTURED_ALL: &str =
        include_str!("../../../tests/fixtures/systemctl/show-captured-all.txt");

    /// Captured independently for the system tests, from a booted Debian 12
    /// container with cron and a test service installed:
    /// `systemctl show --property=SHOW_PROPERTIES` for the units in
    /// [`SEVERAL_UNITS`], and plain `systemctl show trueup-testsvc.service`
    /// (every property, a few hundred lines, one unit).
    const SEVERAL: &str = include_str!("../../../tests/fixtures/systemctl/show-several.txt");
    const SEVERAL_UNITS: &[&str] = &[
        "trueup-testsvc.service",
        "cron.service",
        "nonexistent.service",
        "ssh.service",
    ];
    const ALL_PROPERTIES: &str = include_str!("../../../tests/fixtures/systemctl/show-all.txt");

    fn captured() -> Vec<(&'static str, UnitState)> {
        let units = parse_show(CAPTURED).expect("captured output parses");
        assert_eq!(units.len(), CAPTURED_UNITS.len());
        CAPTURED_UNITS.iter().copied().zip(units).collect()
    }

    fn state(name: &str) -> UnitState {
        captured()
            .into_iter()
            .find(|(asked, _)| *asked == name)
            .map(|(_, unit)| unit)
            .unwrap_or_else(|| panic!("{name} not captured"))
    }

    #[test]
    fn show_args_put_units_after_double_dash() {
        assert_eq!(
            show_args(&["-.mount", "nginx.service"]),
            [
                "show",
                "--property=Id,LoadState,ActiveState,SubState,UnitFileState,MainPID",
                "--",
                "-.mount",
                "nginx.service",
            ]
        );
    }

    #[test]
    fn blocks_follow_argument_order_though_ids_may_differ() {
        for (asked, unit) in captured() {
            match asked {
                "trueup-alias.service" => assert_eq!(unit.id, "trueup-aliased.service"),
                "dbus-org.freedesktop.login1.service" => {
                    assert_eq!(unit.id, "systemd-logind.service")
                }
                _ => assert_eq!(unit.id, asked),
            }
        }
    }

    #[test]
    fn running_enabled_service() {
        let unit = state("trueup-demo.service");
        assert_eq!(
            unit,
            UnitState {
                id: "trueup-demo.service".into(),
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                unit_file_state: "enabled".into(),
                main_pid: Some(67),
            }
        );
        assert!(unit.exists() && unit.is_running() && unit.is_enabled());
        assert!(!unit.is_masked() && !unit.is_static() && !unit.is_failed());
    }

    #[test]
    fn stopped_disabled_service() {
        let unit = state("trueup-stopped.service");
        assert_eq!(unit.main_pid, None);
        assert!(unit.exists() && !unit.is_running() && !unit.is_enabled());
        assert!(!unit.is_static());
    }

    #[test]
    fn failed_service() {
        let unit = state("trueup-fail.service");
        assert!(unit.is_failed() && !unit.is_running());
    }

    #[test]
    fn masked_service() {
        let unit = state("trueup-masked.service");
        assert_eq!(unit.load_state, "masked");
        assert!(unit.is_masked() && unit.exists());
        assert!(!unit.is_enabled() && !unit.is_running() && !unit.is_static());
    }

    #[test]
    fn enabled_for_this_boot_only() {
        let unit = state("trueup-runtime.service");
        assert_eq!(unit.unit_file_state, "enabled-runtime");
        assert!(unit.is_enabled() && !unit.is_running());
    }

    #[test]
    fn oneshot_that_remains_counts_as_running() {
        let unit = state("trueup-oneshot.service");
        assert_eq!(
            (unit.active_state.as_str(), unit.sub_state.as_str()),
            ("active", "exited")
        );
        assert!(unit.is_running());
        assert_eq!(unit.main_pid, None);
    }

    #[test]
    fn activating_is_not_running_yet() {
        let unit = state("trueup-slow.service");
        assert_eq!(unit.active_state, "activating");
        assert!(!unit.is_running());
        assert!(unit.main_pid.is_some());
    }

    #[test]
    fn broken_unit_file_exists_but_is_not_loaded() {
        let unit = state("trueup-badsetting.service");
        assert_eq!(unit.load_state, "bad-setting");
        assert!(unit.exists() && !unit.is_running());
    }

    #[test]
    fn static_units_are_enabled_and_fixed() {
        for name in ["trueup-static.service", "dbus.service", "multi-user.target"] {
            let unit = state(name);
            assert!(unit.is_enabled() && unit.is_static(), "{name}");
        }
    }

    #[test]
    fn linked_alone_is_not_enabled() {
        let unit = state("trueup-linked.service");
        assert_eq!(unit.unit_file_state, "linked");
        assert!(!unit.is_enabled() && !unit.is_static());
    }

    #[test]
    fn alias_shows_its_target() {
        let alias = state("trueup-alias.service");
        assert_eq!(alias, state("trueup-aliased.service"));
        assert!(alias.is_enabled() && alias.is_running());
    }

    #[test]
    fn transient_unit() {
        let unit = state("trueup-transient.service");
        assert_eq!(unit.unit_file_state, "transient");
        assert!(unit.is_running() && !unit.is_enabled() && unit.is_static());
    }

    #[test]
    fn missing_unit() {
        let unit = state("nosuch.service");
        assert_eq!(unit.load_state, "not-found");
        assert_eq!(unit.unit_file_state, "");
        assert!(!unit.exists() && !unit.is_running() && !unit.is_enabled());
        assert!(!unit.is_static() && !unit.is_masked());
    }

    #[test]
    fn non_service_units_have_no_main_pid() {
        for name in ["systemd-journald.socket", "multi-user.target", "-.mount"] {
            assert_eq!(state(name).main_pid, None, "{name}");
        }
        let root = state("-.mount");
        assert_eq!(root.unit_file_state, "");
        assert!(root.is_static() && root.is_running());
    }

    #[test]
    fn every_unit_of_a_booted_system() {
        let units = parse_show(CAPTURED_ALL).expect("parses");
        let blocks = CAPTURED_ALL.split("\n\n").count();
        assert_eq!(units.len(), blocks);
        assert!(units.len() > 200);
        assert!(
            units
                .iter()
                .any(|u| u.id == "systemd-journald.service" && u.is_running())
        );
        assert!(units.iter().any(|u| !u.exists()));
        assert!(units.iter().any(|u| u.is_masked()));
        assert!(units.iter().all(|u| !u.id.is_empty()));
    }

    #[test]
    fn several_units_from_the_system_test_container() {
        let units = parse_show(SEVERAL).expect("parses");
        let ids: Vec<&str> = units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, SEVERAL_UNITS);
        let [testsvc, cron, nonexistent, ssh] = &units[..] else {
            panic!("expected four units, got {units:?}");
        };
        assert!(testsvc.is_running() && testsvc.is_enabled());
        assert_eq!(testsvc.main_pid, Some(119));
        assert!(cron.is_running() && cron.is_enabled() && !cron.is_static());
        for missing in [nonexistent, ssh] {
            assert!(!missing.exists() && !missing.is_running() && !missing.is_enabled());
            assert_eq!(missing.main_pid, None);
        }
    }

    #[test]
    fn every_property_of_one_unit() {
        // Values contain `=`, `;` and brackets (ExecStart=…); the six
        // properties are scattered through the block, MainPID far from Id.
        let units = parse_show(ALL_PROPERTIES).expect("parses");
        assert_eq!(
            units,
            [UnitState {
                id: "trueup-testsvc.service".into(),
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                unit_file_state: "enabled".into(),
                main_pid: Some(119),
            }]
        );
    }

    #[test]
    fn layout_tolerated() {
        assert_eq!(parse_show(""), Ok(vec![]));
        assert_eq!(parse_show("\n\n"), Ok(vec![]));
        // Trailing newline or not, CRLF, extra properties, values with `=`.
        let text = "Id=a.service\r\nLoadState=loaded\r\nActiveState=active\r\nSubState=running\r\nDescription=x=y\r\n\r\n\r\nId=b.socket\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n";
        let units = parse_show(text).expect("parses");
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].unit_file_state, "");
        assert_eq!(units[1].id, "b.socket");
    }

    #[test]
    fn errors_name_the_line() {
        let good = "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=running\n";
        let cases: &[(String, usize)] = &[
            (format!("{good}\nId=b.service\nno equals sign\n"), 7),
            (format!("{good}\n=x\n"), 6),
            (format!("{good}Id=c.service\n"), 5),
            (
                format!("{good}\nId=b.service\nLoadState=loaded\nActiveState=active\n"),
                6,
            ),
            (
                format!("{good}\nLoadState=loaded\nActiveState=active\nSubState=dead\n"),
                6,
            ),
            (
                format!("{good}\nId=\nLoadState=loaded\nActiveState=active\nSubState=dead\n"),
                6,
            ),
            (format!("{good}MainPID=-1\n"), 5),
            (format!("{good}MainPID=99999999999\n"), 5),
            (format!("{good}MainPID=\n"), 5),
        ];
        for (text, line) in cases {
            let err = parse_show(text).expect_err(text);
            assert_eq!(err.line(), *line, "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn no_panic_on_arbitrary_input() {
        for end in 0..=CAPTURED.len() {
            if let Some(prefix) = CAPTURED.get(..end) {
                let _ = parse_show(prefix);
            }
        }
        for junk in ["\0", "=", "==\n\n==", "é=è", "MainPID=\u{0}"] {
            let _ = parse_show(junk);
        }
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;

    /// `systemctl --root R list-unit-files --no-legend --no-pager` for
    /// trueup-{on,off,static,masked,nosuch}.service on a scratch root
    /// (systemd 252, Debian 12): enabled with `--root R enable`, masked with
    /// `--root R mask`, static without `[Install]`, nosuch absent.
    const LIST_ROOT: &str =
        include_str!("../../../tests/fixtures/systemctl/list-unit-files-root.txt");

    #[test]
    fn list_unit_files_under_a_root() {
        let m = parse_list_unit_files(LIST_ROOT).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m["trueup-on.service"], "enabled");
        assert_eq!(m["trueup-off.service"], "disabled");
        assert_eq!(m["trueup-static.service"], "static");
        assert_eq!(m["trueup-masked.service"], "masked");
        let get = |u: &str| state_from_unit_file(u, m.get(u).map(String::as_str));
        assert!(get("trueup-on.service").is_enabled());
        assert!(!get("trueup-off.service").is_enabled());
        assert!(get("trueup-static.service").is_static());
        assert!(get("trueup-masked.service").is_masked());
        let gone = get("trueup-nosuch.service");
        assert!(!gone.exists() && !gone.is_enabled() && !gone.is_masked());
        assert!(!gone.is_running());
    }

    #[test]
    fn list_unit_files_rejects_a_bare_word() {
        let err = parse_list_unit_files("a.service enabled enabled\nlonely\n").unwrap_err();
        assert_eq!(err.line(), 2);
    }

    #[test]
    fn list_args_end_options_before_units() {
        let a = list_unit_files_args(std::path::Path::new("/r"), &["-.mount"]);
        assert_eq!(
            a,
            [
                "--root=/r",
                "list-unit-files",
                "--no-legend",
                "--no-pager",
                "--",
                "-.mount"
            ]
        );
    }
}
