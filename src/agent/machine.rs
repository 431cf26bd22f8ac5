//! The agent's state machine: named states and one pure transition function,
//! so every path through the daemon's life is a unit test.
//!
//! ```text
//!          due / SIGHUP                 run finished
//!   Idle ───────────────► Running ─────────────────────► Idle (next wait)
//!    │                    │  │ SIGHUP: run again at once when done
//!    │ SIGTERM            │  │ SIGTERM: the run stops after the change in hand
//!    ▼                    ▼  ▼
//!  Stopped ◄──run finished── Stopping
//! ```
//!
//! The tokio loop in `agent` only turns signals, timers and finished runs
//! into [`Event`]s and carries out the [`Action`]s; it decides nothing.

use std::time::Duration;

/// Where the daemon is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the next run.
    Idle,
    /// A run is in hand; `again` when a SIGHUP came during it.
    Running { again: bool },
    /// SIGTERM came during a run: waiting for it to finish its change.
    Stopping,
    /// Done; the process exits.
    Stopped,
}

impl State {
    /// For sd-notify `STATUS=` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running { .. } => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The wait for the next run is over.
    Due,
    /// SIGHUP (`systemctl reload`): run now.
    Hangup,
    /// SIGTERM or SIGINT.
    Terminate,
    /// The run in hand ended.
    Finished(RunOutcome),
}

/// How a run ended, as far as scheduling cares (the class of its error,
/// `crate::error_class::ErrorClass`, decides among the failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The run ended: its resources converged, or those that failed did so
    /// for good (a package no source has), which a retry soon would not
    /// mend either; the next run comes at the interval.
    Succeeded,
    /// Worth retrying soon (a fetch failed, a lock was held, a package
    /// install failed because another apt held the dpkg lock): back off.
    Failed,
    /// Failed in a way retrying soon cannot mend (a missing branch, a
    /// refused key): the next try comes at the interval, like after a
    /// success, and any backoff ends.
    Blocked,
    /// The configuration cannot work: exit 78 so systemd stops restarting.
    Misconfigured,
}

/// What the loop must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (an event that does not apply in this state).
    None,
    /// Start a run now.
    StartRun,
    /// Ask the run in hand to stop after its current change.
    StopRun,
    /// Wait this long from now, then deliver `Due`.
    Wait(Duration),
    /// Wait this long from the start of the run that just ended.
    WaitFromStart(Duration),
    /// Exit the process cleanly.
    Exit,
    /// Exit with EX_CONFIG (78): the configuration must be fixed first.
    ExitMisconfigured,
}

/// The schedule's settings and the random parts, given as inputs so the
/// transition stays pure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub interval: Duration,
    /// The configured splay: the first run waits a random part of a tenth
    /// of it, and retries at the interval cap a random part of all of it.
    pub splay: Duration,
    /// This host's stable offset, added once after the first run.
    pub splay_offset: Duration,
    /// First wait after a failure; doubled per failure up to the interval.
    pub first_backoff: Duration,
    /// A random fraction in [0, 1) for this transition's jitter.
    pub jitter: f64,
}

/// The machine's memory beside its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub state: State,
    /// The last backoff wait, while failures go on.
    pub backoff: Option<Duration>,
    /// No run has finished yet.
    pub first: bool,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine {
            state: State::Idle,
            backoff: None,
            first: true,
        }
    }
}

/// A fraction of `d`, for jitter.
fn part(d: Duration, fraction: f64) -> Duration {
    d.mul_f64(fraction.clamp(0.0, 1.0))
}

/// How long the very first run waits after start: a random part of a tenth
/// of the splay, so a fleet booted together does not fetch in step (zero
/// with no splay).
pub fn first_wait(s: &Schedule) -> Duration {
    part(s.splay / 10, s.jitter)
}

/// The jitter added to a backoff of `base`: up to a quarter of it, or, once
/// failures have backed off to the whole interval (the server is down), a
/// random part of the splay, so hosts that failed together neither retry
/// nor come back in step.
pub fn backoff_jitter(base: Duration, s: &Schedule) -> Duration {
    if base >= s.interval {
        part(s.splay, s.jitter)
    } else {
        part(base / 4, s.jitter)
    }
}

/// The transition function.
pub fn transition(m: Machine, event: Event, s: &Schedule) -> (Machine, Action) {
    use Action as A;
    use State::*;
    match (m.state, event) {
        (Idle, Event::Due | Event::Hangup) => (
            Machine {
                state: Running { again: false },
                ..m
            },
            A::StartRun,
        ),
        (Idle, Event::Terminate) => (
            Machine {
                state: Stopped,
                ..m
            },
            A::Exit,
        ),
        (Running { .. }, Event::Hangup) => (
            Machine {
                state: Running { again: true },
                ..m
            },
            A::None,
        ),
        (Running { .. }, Event::Terminate) => (
            Machine {
                state: Stopping,
                ..m
            },
            A::StopRun,
        ),
        (Running { .. }, Event::Finished(RunOutcome::Misconfigured)) => (
            Machine {
                state: Stopped,
                ..m
            },
            A::ExitMisconfigured,
        ),
        (Running { again }, Event::Finished(outcome)) => {
            let (backoff, wait) = match outcome {
                RunOutcome::Succeeded => {
                    let extra = if m.first {
                        s.splay_offset
                    } else {
                        Duration::ZERO
                    };
                    (None, A::WaitFromStart(s.interval + extra))
                }
                RunOutcome::Blocked => (None, A::Wait(s.interval + part(s.splay, s.jitter))),
                // Handled above.
                RunOutcome::Misconfigured => (None, A::ExitMisconfigured),
                RunOutcome::Failed => {
                    let base = match m.backoff {
                        None => s.first_backoff,
                        Some(d) => d.saturating_mul(2),
                    }
                    .min(s.interval);
                    (Some(base), A::Wait(base + backoff_jitter(base, s)))
                }
            };
            let wait = if again { A::Wait(Duration::ZERO) } else { wait };
            (
                Machine {
                    state: Idle,
                    backoff,
                    first: false,
                },
                wait,
            )
        }
        (Stopping, Event::Finished(_)) => (
            Machine {
                state: Stopped,
                ..m
            },
            A::Exit,
        ),
        (Stopping, _) => (m, A::None),
        (Stopped, _) => (m, A::Exit),
        // A run that did not start cannot finish; a timer firing during a
        // run is stale.
        (Idle, Event::Finished(_)) | (Running { .. }, Event::Due) => (m, A::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        interval: Duration::from_secs(300),
        splay: Duration::from_secs(30),
        splay_offset: Duration::from_secs(20),
        first_backoff: Duration::from_secs(2),
        jitter: 0.0,
    };

    fn at(state: State) -> Machine {
        Machine {
            state,
            backoff: None,
            first: false,
        }
    }

    fn running() -> Machine {
        at(State::Running { again: false })
    }

    #[test]
    fn idle_due_starts_a_run() {
        let (m, a) = transition(at(State::Idle), Event::Due, &S);
        assert_eq!(
            (m.state, a),
            (State::Running { again: false }, Action::StartRun)
        );
    }

    #[test]
    fn idle_hangup_starts_a_run_now() {
        let (m, a) = transition(at(State::Idle), Event::Hangup, &S);
        assert_eq!(
            (m.state, a),
            (State::Running { again: false }, Action::StartRun)
        );
    }

    #[test]
    fn idle_terminate_exits() {
        let (m, a) = transition(at(State::Idle), Event::Terminate, &S);
        assert_eq!((m.state, a), (State::Stopped, Action::Exit));
    }

    #[test]
    fn idle_ignores_a_finish_that_cannot_be() {
        let m0 = at(State::Idle);
        assert_eq!(
            transition(m0, Event::Finished(RunOutcome::Succeeded), &S),
            (m0, Action::None)
        );
    }

    #[test]
    fn running_ignores_a_stale_timer() {
        assert_eq!(
            transition(running(), Event::Due, &S),
            (running(), Action::None)
        );
    }

    #[test]
    fn running_hangup_runs_again_when_done() {
        let (m, a) = transition(running(), Event::Hangup, &S);
        assert_eq!((m.state, a), (State::Running { again: true }, Action::None));
        let (m, a) = transition(m, Event::Finished(RunOutcome::Succeeded), &S);
        assert_eq!((m.state, a), (State::Idle, Action::Wait(Duration::ZERO)));
    }

    #[test]
    fn running_terminate_stops_the_run_then_exits() {
        let (m, a) = transition(running(), Event::Terminate, &S);
        assert_eq!((m.state, a), (State::Stopping, Action::StopRun));
        let (m2, a) = transition(m, Event::Hangup, &S);
        assert_eq!((m2, a), (m, Action::None));
        let (m2, a) = transition(m, Event::Terminate, &S);
        assert_eq!((m2, a), (m, Action::None));
        let (m, a) = transition(m, Event::Finished(RunOutcome::Failed), &S);
        assert_eq!((m.state, a), (State::Stopped, Action::Exit));
        assert_eq!(transition(m, Event::Due, &S).1, Action::Exit);
    }

    #[test]
    fn the_first_success_adds_the_splay_offset_then_plain_interval() {
        let m0 = Machine {
            state: State::Running { again: false },
            ..Machine::default()
        };
        let (m, a) = transition(m0, Event::Finished(RunOutcome::Succeeded), &S);
        assert_eq!(a, Action::WaitFromStart(Duration::from_secs(320)));
        assert!(!m.first);
        let (m, _) = transition(m, Event::Due, &S);
        let (_, a) = transition(m, Event::Finished(RunOutcome::Succeeded), &S);
        assert_eq!(a, Action::WaitFromStart(Duration::from_secs(300)));
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_interval_and_success_resets() {
        let s = Schedule {
            interval: Duration::from_secs(20),
            ..S
        };
        let mut m = running();
        let mut waits = vec![];
        for _ in 0..6 {
            let (next, a) = transition(m, Event::Finished(RunOutcome::Failed), &s);
            let Action::Wait(w) = a else { panic!("{a:?}") };
            waits.push(w.as_secs());
            m = transition(next, Event::Due, &s).0;
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 20, 20]);
        let (m, _) = transition(m, Event::Finished(RunOutcome::Succeeded), &s);
        assert_eq!(m.backoff, None);
    }

    #[test]
    fn a_permanent_failure_waits_the_interval_and_ends_the_backoff() {
        let backing_off = Machine {
            backoff: Some(Duration::from_secs(8)),
            ..running()
        };
        let (m, a) = transition(backing_off, Event::Finished(RunOutcome::Blocked), &S);
        assert_eq!((m.state, a), (State::Idle, Action::Wait(S.interval)));
        assert_eq!(m.backoff, None);
        let s = Schedule { jitter: 0.5, ..S };
        let (_, a) = transition(running(), Event::Finished(RunOutcome::Blocked), &s);
        assert_eq!(a, Action::Wait(S.interval + S.splay / 2));
        // A SIGHUP during the run still runs again at once.
        let again = at(State::Running { again: true });
        let (_, a) = transition(again, Event::Finished(RunOutcome::Blocked), &S);
        assert_eq!(a, Action::Wait(Duration::ZERO));
    }

    #[test]
    fn a_configuration_error_exits_78_even_with_a_run_asked_for() {
        for m0 in [running(), at(State::Running { again: true })] {
            let (m, a) = transition(m0, Event::Finished(RunOutcome::Misconfigured), &S);
            assert_eq!((m.state, a), (State::Stopped, Action::ExitMisconfigured));
        }
        // Stopping anyway: a plain exit, as asked.
        let (m, a) = transition(
            at(State::Stopping),
            Event::Finished(RunOutcome::Misconfigured),
            &S,
        );
        assert_eq!((m.state, a), (State::Stopped, Action::Exit));
    }

    #[test]
    fn backoff_jitter_adds_up_to_a_quarter() {
        let s = Schedule { jitter: 0.999, ..S };
        let (_, a) = transition(running(), Event::Finished(RunOutcome::Failed), &s);
        let Action::Wait(w) = a else { panic!("{a:?}") };
        assert!(
            w > Duration::from_secs(2) && w < Duration::from_millis(2500),
            "{w:?}"
        );
        // At the interval cap the jitter spreads over the splay.
        let capped = Machine {
            backoff: Some(S.interval),
            ..running()
        };
        let (_, a) = transition(capped, Event::Finished(RunOutcome::Failed), &s);
        let Action::Wait(w) = a else { panic!("{a:?}") };
        assert!(
            w > S.interval + Duration::from_secs(29) && w < S.interval + S.splay,
            "{w:?}"
        );
    }

    #[test]
    fn the_first_run_waits_a_random_part_of_a_tenth_of_the_splay() {
        assert_eq!(first_wait(&S), Duration::ZERO);
        let s = Schedule { jitter: 0.5, ..S };
        assert_eq!(first_wait(&s), Duration::from_millis(1500));
        let none = Schedule {
            splay: Duration::ZERO,
            jitter: 0.9,
            ..S
        };
        assert_eq!(first_wait(&none), Duration::ZERO);
    }
}
