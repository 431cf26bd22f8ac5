//! Which commit a run applies: the branch tip, the last good commit (the
//! tip does not render), nothing (the tip is refused), or the last healthy
//! commit (the tip failed its health checks and was rolled back). A pure
//! function of typed inputs, tested with plain values; nothing else in
//! trueup decides it (the health stage asks it too).

use crate::state::HostState;

/// What the run has learnt so far about the branch tip.
///
/// The pipeline asks [`choose_commit`] again each time it learns more: with
/// `Verified` after the signature and ancestry checks, with `Unrenderable`
/// if the tip then fails to render, with `Unhealthy` if its health checks
/// fail after it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TipVerdict {
    /// Signed as required (or no trust configured) and descends from the
    /// last applied commit.
    Verified,
    /// Untrusted signature, or not a descendant of the applied commit (a
    /// force-push, an old commit replayed).
    Refused(String),
    /// Does not render or validate (a YAML error, a missing variable, a
    /// path outside `allowed_paths`).
    Unrenderable(String),
    /// Applied, but its health checks failed (decided by `crate::health`).
    Unhealthy(String),
}

/// Which commit the run applies, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitChoice {
    /// Apply the branch tip.
    Tip { commit: String },
    /// The tip does not render: converge the last good (applied) commit and
    /// report the tip as rejected.
    LastGood {
        commit: String,
        rejected: String,
        reason: String,
    },
    /// The tip must not be used: nothing is rendered or applied.
    Refused { commit: String, reason: String },
    /// The tip does not render and there is no earlier commit to fall back
    /// on (a fresh host, or the applied commit itself no longer renders).
    Broken { commit: String, reason: String },
    /// The tip is the commit rolled back for failing its health checks: stay
    /// on the last healthy commit until the tip moves.
    StayHealthy {
        commit: String,
        bad: String,
        reason: String,
    },
    /// The tip was just applied and failed its health checks: go back to
    /// the last healthy commit and remember the tip as bad.
    RollBack {
        to: String,
        bad: String,
        reason: String,
    },
    /// The tip failed its health checks and no healthy commit is known to
    /// go back to: keep it, report it unhealthy.
    KeepUnhealthy { commit: String, reason: String },
}

impl CommitChoice {
    /// The commit this run converges, if any.
    pub fn commit_to_apply(&self) -> Option<&str> {
        match self {
            CommitChoice::Tip { commit }
            | CommitChoice::LastGood { commit, .. }
            | CommitChoice::StayHealthy { commit, .. }
            | CommitChoice::KeepUnhealthy { commit, .. } => Some(commit),
            CommitChoice::RollBack { to, .. } => Some(to),
            CommitChoice::Refused { .. } | CommitChoice::Broken { .. } => None,
        }
    }

    /// Whether the state's `bad_commit` mark no longer holds: the tip moved
    /// past it, so the new tip gets its chance.
    pub fn clears_bad_commit(&self, state: &HostState) -> bool {
        let Some(bad) = &state.bad_commit else {
            return false;
        };
        match self {
            CommitChoice::StayHealthy { .. } | CommitChoice::RollBack { .. } => false,
            CommitChoice::Refused { .. } => false,
            CommitChoice::Tip { commit }
            | CommitChoice::KeepUnhealthy { commit, .. }
            | CommitChoice::Broken { commit, .. } => *commit != bad.commit,
            CommitChoice::LastGood { rejected, .. } => *rejected != bad.commit,
        }
    }
}

/// Decides which commit a run applies, from the tip, what is known about it
/// and what the host remembers.
///
/// Order matters: a refusal wins over everything (an untrusted commit is
/// never even rendered); then a tip already rolled back stays rolled back
/// until the branch moves; then rendering and health.
pub fn choose_commit(tip: &str, verdict: &TipVerdict, state: &HostState) -> CommitChoice {
    let tip_owned = tip.to_string();
    let rolled_back = state.bad_commit.as_ref().filter(|b| b.commit == tip);
    let healthy = state
        .last_healthy
        .as_deref()
        .or(state.applied_commit.as_deref())
        .filter(|h| *h != tip);
    if !matches!(verdict, TipVerdict::Refused(_))
        && let (Some(bad), Some(healthy)) = (rolled_back, healthy)
    {
        return CommitChoice::StayHealthy {
            commit: healthy.to_string(),
            bad: bad.commit.clone(),
            reason: bad.reason.clone(),
        };
    }
    match verdict {
        TipVerdict::Refused(reason) => CommitChoice::Refused {
            commit: tip_owned,
            reason: reason.clone(),
        },
        TipVerdict::Verified => CommitChoice::Tip { commit: tip_owned },
        TipVerdict::Unrenderable(reason) => match state.applied_commit.as_deref() {
            Some(good) if good != tip => CommitChoice::LastGood {
                commit: good.to_string(),
                rejected: tip_owned,
                reason: reason.clone(),
            },
            _ => CommitChoice::Broken {
                commit: tip_owned,
                reason: reason.clone(),
            },
        },
        TipVerdict::Unhealthy(reason) => match state.last_healthy.as_deref() {
            Some(healthy) if healthy != tip => CommitChoice::RollBack {
                to: healthy.to_string(),
                bad: tip_owned,
                reason: reason.clone(),
            },
            _ => CommitChoice::KeepUnhealthy {
                commit: tip_owned,
                reason: reason.clone(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::BadCommit;

    const A: &str = "aaaa";
    const B: &str = "bbbb";
    const C: &str = "cccc";

    fn state(applied: Option<&str>, healthy: Option<&str>, bad: Option<&str>) -> HostState {
        HostState {
            applied_commit: applied.map(str::to_string),
            last_healthy: healthy.map(str::to_string),
            bad_commit: bad.map(|c| BadCommit {
                commit: c.to_string(),
                reason: "http check failed".into(),
                at: "2026-12-01T00:00:00Z".into(),
            }),
            ..HostState::default()
        }
    }

    fn unrenderable() -> TipVerdict {
        TipVerdict::Unrenderable("trueup.yaml:1:1: bad".into())
    }

    #[test]
    fn a_verified_new_tip_is_applied() {
        let c = choose_commit(B, &TipVerdict::Verified, &state(Some(A), Some(A), None));
        assert_eq!(c, CommitChoice::Tip { commit: B.into() });
        assert_eq!(c.commit_to_apply(), Some(B));
    }

    #[test]
    fn a_fresh_host_applies_the_tip() {
        let c = choose_commit(A, &TipVerdict::Verified, &HostState::default());
        assert_eq!(c, CommitChoice::Tip { commit: A.into() });
    }

    #[test]
    fn a_tip_that_does_not_render_falls_back_to_the_last_good_commit() {
        let c = choose_commit(B, &unrenderable(), &state(Some(A), None, None));
        assert_eq!(
            c,
            CommitChoice::LastGood {
                commit: A.into(),
                rejected: B.into(),
                reason: "trueup.yaml:1:1: bad".into()
            }
        );
        assert_eq!(c.commit_to_apply(), Some(A));
    }

    #[test]
    fn a_broken_tip_on_a_fresh_host_applies_nothing() {
        let c = choose_commit(B, &unrenderable(), &HostState::default());
        assert!(matches!(c, CommitChoice::Broken { ref commit, .. } if commit == B));
        assert_eq!(c.commit_to_apply(), None);
    }

    #[test]
    fn the_applied_commit_that_no_longer_renders_is_broken_not_a_fallback() {
        let c = choose_commit(A, &unrenderable(), &state(Some(A), None, None));
        assert!(matches!(c, CommitChoice::Broken { .. }), "{c:?}");
    }

    #[test]
    fn a_refused_tip_applies_nothing_even_with_a_last_good_commit() {
        let v = TipVerdict::Refused("not signed".into());
        let c = choose_commit(B, &v, &state(Some(A), Some(A), None));
        assert_eq!(
            c,
            CommitChoice::Refused {
                commit: B.into(),
                reason: "not signed".into()
            }
        );
        assert_eq!(c.commit_to_apply(), None);
    }

    #[test]
    fn refusal_wins_over_a_rolled_back_mark() {
        let v = TipVerdict::Refused("not a descendant".into());
        let c = choose_commit(B, &v, &state(Some(A), Some(A), Some(B)));
        assert!(matches!(c, CommitChoice::Refused { .. }), "{c:?}");
    }

    #[test]
    fn a_tip_that_fails_health_rolls_back_to_the_last_healthy_commit() {
        let v = TipVerdict::Unhealthy("nginx.service failed".into());
        let c = choose_commit(B, &v, &state(Some(B), Some(A), None));
        assert_eq!(
            c,
            CommitChoice::RollBack {
                to: A.into(),
                bad: B.into(),
                reason: "nginx.service failed".into()
            }
        );
        assert_eq!(c.commit_to_apply(), Some(A));
    }

    #[test]
    fn an_unhealthy_tip_without_a_healthy_commit_is_kept() {
        let v = TipVerdict::Unhealthy("tcp 80 refused".into());
        let c = choose_commit(B, &v, &state(Some(B), None, None));
        assert!(matches!(c, CommitChoice::KeepUnhealthy { ref commit, .. } if commit == B));
        let c = choose_commit(B, &v, &state(Some(B), Some(B), None));
        assert!(matches!(c, CommitChoice::KeepUnhealthy { .. }), "{c:?}");
    }

    #[test]
    fn a_rolled_back_commit_is_not_retried_while_the_tip_stays() {
        let s = state(Some(A), Some(A), Some(B));
        let c = choose_commit(B, &TipVerdict::Verified, &s);
        assert_eq!(
            c,
            CommitChoice::StayHealthy {
                commit: A.into(),
                bad: B.into(),
                reason: "http check failed".into()
            }
        );
        assert!(!c.clears_bad_commit(&s));
    }

    #[test]
    fn a_rolled_back_commit_without_last_healthy_stays_on_the_applied_one() {
        let s = state(Some(A), None, Some(B));
        let c = choose_commit(B, &TipVerdict::Verified, &s);
        assert!(matches!(c, CommitChoice::StayHealthy { ref commit, .. } if commit == A));
    }

    #[test]
    fn when_the_tip_moves_past_a_bad_commit_it_is_tried_and_the_mark_cleared() {
        let s = state(Some(A), Some(A), Some(B));
        let c = choose_commit(C, &TipVerdict::Verified, &s);
        assert_eq!(c, CommitChoice::Tip { commit: C.into() });
        assert!(c.clears_bad_commit(&s));
        let c = choose_commit(C, &unrenderable(), &s);
        assert!(matches!(c, CommitChoice::LastGood { ref commit, .. } if commit == A));
        assert!(c.clears_bad_commit(&s));
    }

    #[test]
    fn no_bad_mark_nothing_to_clear() {
        let s = state(Some(A), Some(A), None);
        let c = choose_commit(B, &TipVerdict::Verified, &s);
        assert!(!c.clears_bad_commit(&s));
    }
}
