//! Service resources, driven through systemd: enabled or disabled, running
//! or stopped, masked.
//!
//! Every declared unit is observed with one `systemctl show` (or, under
//! `--root`, one `systemctl --root R list-unit-files`); [`diff`] compares a
//! declaration with what systemd reports and is pure. Only what is declared
//! is compared: a service declared `enabled: true` alone may be stopped.
//!
//! Rules, from what systemd allows:
//!
//! - A unit with nothing to enable (`static`, `generated`, `transient`, or
//!   no `[Install]`) has no enablement drift; something else starts it.
//! - A unit that does not exist is neither enabled, running nor masked; if
//!   it is declared so, the change is still attempted (its package may
//!   install it earlier in the same run) and systemctl's error is reported.
//! - Under `--root R` (other than `/`), systemd does not run that root:
//!   enablement and masking are managed with `systemctl --root`, but
//!   `state:` is an error for that service, and there is no daemon-reload
//!   or restart.

pub mod systemctl;

use crate::desired::{ServiceRunState, ServiceSpec};
use crate::resource::{Attribute, BackendError, Drift};
use systemctl::UnitState;

/// What converging one unit takes, carried out in this order: unmask,
/// enable or disable, start or stop, mask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAction {
    pub unmask: bool,
    /// `Some(true)` enables, `Some(false)` disables.
    pub enable: Option<bool>,
    /// `Some(true)` starts, `Some(false)` stops.
    pub start: Option<bool>,
    pub mask: bool,
}

impl ServiceAction {
    fn is_empty(&self) -> bool {
        *self == ServiceAction::default()
    }

    /// The systemctl verbs, in order: "unmask, enable, start".
    pub fn verbs(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.unmask {
            v.push("unmask");
        }
        match self.enable {
            Some(true) => v.push("enable"),
            Some(false) => v.push("disable"),
            None => {}
        }
        match self.start {
            Some(true) => v.push("start"),
            Some(false) => v.push("stop"),
            None => {}
        }
        if self.mask {
            v.push("mask");
        }
        v
    }

    pub fn describe(&self) -> String {
        self.verbs().join(", ")
    }
}

/// Talks to systemd: observes units in one call and changes them.
pub trait UnitControl {
    /// Whether systemd runs the managed root, so units can be started,
    /// stopped, restarted and reloaded (false under `--root`).
    fn runtime(&self) -> bool;
    /// The state of every unit in `units`, in the same order, in one call.
    fn observe(&self, units: &[&str]) -> Result<Vec<UnitState>, BackendError>;
    fn converge(&self, unit: &str, action: &ServiceAction) -> Result<(), BackendError>;
    fn daemon_reload(&self) -> Result<(), BackendError>;
    /// Restarts a running unit (or reloads it with `reload`); a unit that
    /// is not running is left alone.
    fn restart(&self, unit: &str, reload: bool) -> Result<(), BackendError>;
}

/// Whether the unit runs: "running", or "not running (failed)".
fn run_state(unit: &UnitState) -> String {
    if !unit.exists() {
        "not-found".into()
    } else if unit.is_running() {
        "running".into()
    } else {
        format!("not running ({})", unit.active_state)
    }
}

fn enable_state(unit: &UnitState) -> String {
    if !unit.exists() {
        "not-found".into()
    } else if unit.unit_file_state.is_empty() {
        "no unit file".into()
    } else {
        unit.unit_file_state.clone()
    }
}

fn mask_word(masked: bool) -> &'static str {
    if masked { "masked" } else { "unmasked" }
}

/// Compares a declared service with the unit's state. `runtime` says
/// whether systemd runs the root (see [`UnitControl::runtime`]); without
/// it a declared `state:` is an error.
pub fn diff(
    unit_name: &str,
    spec: &ServiceSpec,
    unit: &UnitState,
    runtime: bool,
) -> Result<(Vec<Drift>, Option<ServiceAction>), String> {
    if spec.state.is_some() && !runtime {
        return Err(format!(
            "whether {unit_name} runs can be neither observed nor changed under another \
             --root (systemctl --root manages enablement and masking only); drop `state:` \
             or run trueup on that system"
        ));
    }
    let mut drift = Vec::new();
    let mut action = ServiceAction::default();
    let masked = unit.is_masked();
    if let Some(want) = spec.masked
        && want != masked
    {
        drift.push(Drift::new(
            Attribute::Masked,
            mask_word(want),
            mask_word(masked),
        ));
        action.unmask = !want;
        action.mask = want;
    }
    if let Some(want) = spec.enabled
        && !unit.is_static()
        && want != unit.is_enabled()
    {
        drift.push(Drift::new(
            Attribute::Enabled,
            if want { "enabled" } else { "disabled" },
            enable_state(unit),
        ));
        action.enable = Some(want);
    }
    if let Some(want) = spec.state {
        let want = want == ServiceRunState::Running;
        if want != unit.is_running() {
            drift.push(Drift::new(
                Attribute::State,
                if want { "running" } else { "stopped" },
                run_state(unit),
            ));
            action.start = Some(want);
        }
    }
    let action = (!action.is_empty()).then_some(action);
    Ok((drift, action))
}

/// Whether the unit runs once its own step is done: as declared, or as it
/// is when `state:` is not declared. A masked unit does not run.
pub fn runs_after(spec: &ServiceSpec, unit: &UnitState) -> bool {
    if spec.masked == Some(true) {
        return false;
    }
    match spec.state {
        Some(s) => s == ServiceRunState::Running,
        None => unit.is_running(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(load: &str, active: &str, file: &str) -> UnitState {
        UnitState {
            id: "x.service".into(),
            load_state: load.into(),
            active_state: active.into(),
            sub_state: if active == "active" {
                "running"
            } else {
                "dead"
            }
            .into(),
            unit_file_state: file.into(),
            main_pid: (active == "active").then_some(42),
        }
    }

    fn spec(
        enabled: Option<bool>,
        state: Option<ServiceRunState>,
        masked: Option<bool>,
    ) -> ServiceSpec {
        ServiceSpec {
            enabled,
            state,
            masked,
            package: None,
        }
    }

    const RUNNING: Option<ServiceRunState> = Some(ServiceRunState::Running);
    const STOPPED: Option<ServiceRunState> = Some(ServiceRunState::Stopped);

    #[test]
    fn enabled_and_running_is_in_sync() {
        let u = unit("loaded", "active", "enabled");
        assert_eq!(
            diff(
                "x.service",
                &spec(Some(true), RUNNING, Some(false)),
                &u,
                true
            ),
            Ok((vec![], None))
        );
    }

    #[test]
    fn stopped_and_disabled_by_hand_is_drift_on_both() {
        let u = unit("loaded", "inactive", "disabled");
        let (d, a) = diff("x.service", &spec(Some(true), RUNNING, None), &u, true).unwrap();
        assert_eq!(
            d,
            vec![
                Drift::new(Attribute::Enabled, "enabled", "disabled"),
                Drift::new(Attribute::State, "running", "not running (inactive)"),
            ]
        );
        let a = a.unwrap();
        assert_eq!(a.describe(), "enable, start");
    }

    #[test]
    fn failed_unit_is_started_again() {
        let u = unit("loaded", "failed", "enabled");
        let (d, a) = diff("x.service", &spec(None, RUNNING, None), &u, true).unwrap();
        assert_eq!(d[0].actual, "not running (failed)");
        assert_eq!(a.unwrap().start, Some(true));
    }

    #[test]
    fn running_unit_declared_stopped_and_disabled() {
        let u = unit("loaded", "active", "enabled");
        let (d, a) = diff("x.service", &spec(Some(false), STOPPED, None), &u, true).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(a.unwrap().describe(), "disable, stop");
    }

    #[test]
    fn masked_by_hand_is_unmasked_then_enabled_and_started() {
        let u = unit("masked", "inactive", "masked");
        let (d, a) = diff(
            "x.service",
            &spec(Some(true), RUNNING, Some(false)),
            &u,
            true,
        )
        .unwrap();
        let attrs: Vec<_> = d.iter().map(|d| d.attribute).collect();
        assert_eq!(
            attrs,
            vec![Attribute::Masked, Attribute::Enabled, Attribute::State]
        );
        assert_eq!(d[0], Drift::new(Attribute::Masked, "unmasked", "masked"));
        assert_eq!(d[1].actual, "masked");
        assert_eq!(a.unwrap().describe(), "unmask, enable, start");
    }

    #[test]
    fn declared_masked_stops_first_then_masks() {
        let u = unit("loaded", "active", "enabled");
        let (_, a) = diff("x.service", &spec(None, STOPPED, Some(true)), &u, true).unwrap();
        assert_eq!(a.unwrap().verbs(), vec!["stop", "mask"]);
    }

    #[test]
    fn static_unit_has_no_enablement_drift() {
        let u = unit("loaded", "inactive", "static");
        assert_eq!(
            diff("x.service", &spec(Some(false), None, None), &u, true),
            Ok((vec![], None))
        );
        assert_eq!(
            diff("x.service", &spec(Some(true), None, None), &u, true),
            Ok((vec![], None))
        );
    }

    #[test]
    fn missing_unit_is_still_attempted() {
        let u = unit("not-found", "inactive", "");
        let (d, a) = diff("x.service", &spec(Some(true), RUNNING, None), &u, true).unwrap();
        assert_eq!(d[0], Drift::new(Attribute::Enabled, "enabled", "not-found"));
        assert_eq!(d[1], Drift::new(Attribute::State, "running", "not-found"));
        assert_eq!(a.unwrap().describe(), "enable, start");
        // Not there is as good as disabled, stopped and unmasked.
        assert_eq!(
            diff(
                "x.service",
                &spec(Some(false), STOPPED, Some(false)),
                &u,
                true
            ),
            Ok((vec![], None))
        );
    }

    #[test]
    fn state_is_refused_without_a_running_systemd() {
        let u = unit("loaded", "unknown", "enabled");
        let err = diff("x.service", &spec(Some(true), RUNNING, None), &u, false).unwrap_err();
        assert!(err.contains("x.service") && err.contains("--root"), "{err}");
        assert_eq!(
            diff("x.service", &spec(Some(true), None, None), &u, false),
            Ok((vec![], None))
        );
    }

    #[test]
    fn runs_after_its_step() {
        let up = unit("loaded", "active", "enabled");
        let down = unit("loaded", "inactive", "enabled");
        assert!(runs_after(&spec(None, None, None), &up));
        assert!(!runs_after(&spec(None, None, None), &down));
        assert!(runs_after(&spec(None, RUNNING, None), &down));
        assert!(!runs_after(&spec(None, STOPPED, None), &up));
        assert!(!runs_after(&spec(None, None, Some(true)), &up));
    }
}
