//! Where is a VM after (or during) a migration? Decided from structured facts
//! only: what its VMM answers, or the record it left (see
//! [`crate::runtime::record`]), and the other agent's word. Never from a log
//! line, an error message, or the absence of an answer: a VMM that does not
//! answer may still act, so silence never proves that a copy is gone.
//!
//! The rules, which keep at most one copy able to run:
//! - a source copy may run again only if its VMM never recorded the
//!   handoff, or the target says it never took the VM and never can
//!   ([`IncomingState::Gone`]);
//! - a target copy is the VM's as soon as its VMM recorded the commit,
//!   whatever becomes of that VMM afterwards;
//! - `Gone` is said of a target only when its receiving VMM has ended
//!   without a commit, or says it gave up (a final decision).

use crate::api::IncomingState;
use crate::migration::gate::Phase;
use crate::runtime::control::MigrationEnd;
use crate::runtime::record::{Exit, Handoff, Side, VmmRecord};

use super::vmm::Observed;

/// What the source's agent concludes about a VM it was sending away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceVerdict {
    /// Not over: the VMM still migrates, or the target has not decided yet.
    Pending,
    /// The target's word is the missing fact: ask it, then judge again.
    AskTarget,
    /// The VM did not move; its VMM here holds it and answers. Its own word
    /// on why, when it gave one.
    Stayed { end: Option<MigrationEnd> },
    /// The VM did not move and never can, but its VMM here does not answer
    /// (`stopped`: it is stopped, SIGSTOP). It holds the VM.
    Frozen { stopped: bool },
    /// The VMM here is paused in doubt, and the target never took the VM:
    /// resuming it here is safe.
    ResumeHere,
    /// The VM did not move, and its VMM here ended (`lost`: killed or
    /// failed, so the VM runs nowhere; `clean`: stopped on request, or the
    /// guest powered off; else its guest failed).
    EndedHere { lost: bool, clean: bool, detail: String },
    /// The target took the VM (`lost_there`: its VMM there has died since).
    /// Whatever is left here must never run again.
    Moved { lost_there: bool },
}

fn source_handoff(handoff: Option<&Handoff>, id: &str) -> bool {
    handoff.is_some_and(|h| h.side == Side::Source && h.migration.as_deref() == Some(id))
}

fn after_handoff(target: Option<IncomingState>, if_gone: SourceVerdict) -> SourceVerdict {
    match target {
        None => SourceVerdict::AskTarget,
        Some(IncomingState::Undecided) => SourceVerdict::Pending,
        Some(IncomingState::Running | IncomingState::Stopped) => SourceVerdict::Moved { lost_there: false },
        Some(IncomingState::Lost) => SourceVerdict::Moved { lost_there: true },
        Some(IncomingState::Gone) => if_gone,
    }
}

/// Judges migration `id` of a VM whose VMM here was observed as `vmm`;
/// `target` is the target agent's answer, when it was asked and answered.
pub fn source(id: &str, vmm: &Observed, target: Option<IncomingState>) -> SourceVerdict {
    match vmm {
        Observed::Answers(status) => {
            if status.migration.as_deref() == Some(id) {
                SourceVerdict::Pending
            } else if status.in_doubt.is_some() {
                after_handoff(target, SourceVerdict::ResumeHere)
            } else {
                SourceVerdict::Stayed {
                    end: status
                        .last_migration
                        .clone()
                        .filter(|end| end.migration.as_deref() == Some(id)),
                }
            }
        }
        Observed::Silent { stopped, .. } => {
            // With the handoff recorded, the target may run the VM; without,
            // Go was never sent and it never can, but it may still be
            // waiting for more, and a VMM that is continued may still finish
            // the move. Either way it is over only once the target decided.
            after_handoff(target, SourceVerdict::Frozen { stopped: *stopped })
        }
        Observed::Gone(record) => {
            let record = record.as_ref();
            if record.is_some_and(VmmRecord::migrated) {
                return SourceVerdict::Moved { lost_there: false };
            }
            let ended = ended_here(record);
            if source_handoff(record.and_then(|r| r.handoff.as_ref()), id) {
                after_handoff(target, ended)
            } else {
                ended
            }
        }
    }
}

/// How a VMM that left `record` (none: it was killed) ended, for a VM that
/// stays here.
fn ended_here(record: Option<&VmmRecord>) -> SourceVerdict {
    match record.and_then(|r| r.exit.as_ref()) {
        None => SourceVerdict::EndedHere {
            lost: true,
            clean: false,
            detail: "its VMM process died (killed)".into(),
        },
        Some(Exit::Failed { detail }) => SourceVerdict::EndedHere {
            lost: true,
            clean: false,
            detail: format!("its VMM failed: {detail}"),
        },
        Some(Exit::Stopped { stop }) => SourceVerdict::EndedHere {
            lost: false,
            clean: stop.is_clean(),
            detail: format!("its VMM ended: {stop}"),
        },
        Some(Exit::NotReceived { detail, .. }) => SourceVerdict::EndedHere {
            lost: true,
            clean: false,
            detail: detail.clone(),
        },
    }
}

/// What became of arrival `id` on this (the target) host, from its
/// receiving VMM as observed.
pub fn arrival(id: &str, vmm: &Observed) -> IncomingState {
    let committed = |handoff: Option<&Handoff>| {
        handoff.is_some_and(|h| h.side == Side::Target && h.migration.as_deref() == Some(id))
    };
    match vmm {
        Observed::Answers(status) => {
            let phase = status.incoming.as_ref().map(|i| i.phase);
            if status.state.is_some() || phase == Some(Phase::Running) || committed(status.handoff.as_ref()) {
                IncomingState::Running
            } else if phase == Some(Phase::Discarded) {
                IncomingState::Gone
            } else {
                IncomingState::Undecided
            }
        }
        // A receiver that cannot answer may still commit when it goes on,
        // unless it did already.
        Observed::Silent { record, .. } => {
            if committed(record.as_ref().and_then(|r| r.handoff.as_ref())) {
                IncomingState::Running
            } else {
                IncomingState::Undecided
            }
        }
        Observed::Gone(record) => {
            let record = record.as_ref();
            if !committed(record.and_then(|r| r.handoff.as_ref())) {
                IncomingState::Gone
            } else if matches!(record.and_then(|r| r.exit.as_ref()), Some(Exit::Stopped { .. })) {
                // It took the VM, and then the VM was stopped (on request,
                // or by its guest): not lost, stopped there.
                IncomingState::Stopped
            } else {
                IncomingState::Lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::control::{Failure, IncomingStatus, VmStatus};
    use crate::runtime::event::StopReason;
    use crate::vmm::RunState;

    fn status() -> VmStatus {
        VmStatus {
            state: Some(RunState::Running),
            migrating_to: None,
            migration: None,
            in_doubt: None,
            pid: 10,
            vcpus: 1,
            memory_bytes: 1 << 28,
            incoming: None,
            last_migration: None,
            handoff: None,
        }
    }

    fn handoff(side: Side, id: &str) -> Option<Handoff> {
        Some(Handoff {
            side,
            migration: Some(id.into()),
            session: 1,
        })
    }

    fn gone(handoff: Option<Handoff>, exit: Option<Exit>) -> Observed {
        Observed::Gone(Some(VmmRecord {
            pid: 10,
            listening: None,
            handoff,
            exit,
            console_start: None,
        }))
    }

    const ALL: [Option<IncomingState>; 5] = [
        None,
        Some(IncomingState::Undecided),
        Some(IncomingState::Running),
        Some(IncomingState::Lost),
        Some(IncomingState::Gone),
    ];

    #[test]
    fn a_source_that_never_recorded_the_handoff_never_defers_to_the_target_wrongly() {
        // Still migrating: wait, whatever the target says.
        let migrating = Observed::Answers(VmStatus {
            migration: Some("m".into()),
            ..status()
        });
        for target in ALL {
            assert_eq!(source("m", &migrating, target), SourceVerdict::Pending);
        }
        // It rolled back and says why.
        let end = MigrationEnd {
            migration: Some("m".into()),
            failure: Failure::new("cancelled", "cancelled"),
        };
        let stayed = Observed::Answers(VmStatus {
            last_migration: Some(end.clone()),
            ..status()
        });
        assert_eq!(source("m", &stayed, None), SourceVerdict::Stayed { end: Some(end) });
        // Killed before Go: lost here, and the target can never have it.
        for target in ALL {
            assert_eq!(
                source("m", &Observed::Gone(None), target),
                SourceVerdict::EndedHere {
                    lost: true,
                    clean: false,
                    detail: "its VMM process died (killed)".into()
                }
            );
        }
        let stopped = gone(
            None,
            Some(Exit::Stopped {
                stop: StopReason::Requested,
            }),
        );
        assert!(matches!(
            source("m", &stopped, None),
            SourceVerdict::EndedHere {
                lost: false,
                clean: true,
                ..
            }
        ));
    }

    #[test]
    fn after_the_handoff_only_the_target_decides() {
        let in_doubt = Observed::Answers(VmStatus {
            in_doubt: Some("link lost after Go".into()),
            state: Some(RunState::Paused),
            ..status()
        });
        let died_after_go = gone(handoff(Side::Source, "m"), None);
        let frozen_after_go = Observed::Silent {
            stopped: true,
            record: Some(VmmRecord {
                pid: 10,
                listening: None,
                handoff: handoff(Side::Source, "m"),
                exit: None,
                console_start: None,
            }),
        };
        for (target, moved) in [
            (Some(IncomingState::Running), SourceVerdict::Moved { lost_there: false }),
            (Some(IncomingState::Lost), SourceVerdict::Moved { lost_there: true }),
        ] {
            assert_eq!(source("m", &in_doubt, target), moved);
            assert_eq!(source("m", &died_after_go, target), moved);
            assert_eq!(source("m", &frozen_after_go, target), moved);
        }
        assert_eq!(source("m", &in_doubt, None), SourceVerdict::AskTarget);
        assert_eq!(
            source("m", &in_doubt, Some(IncomingState::Undecided)),
            SourceVerdict::Pending
        );
        assert_eq!(source("m", &died_after_go, None), SourceVerdict::AskTarget);
        assert_eq!(
            source("m", &in_doubt, Some(IncomingState::Gone)),
            SourceVerdict::ResumeHere
        );
        assert!(matches!(
            source("m", &died_after_go, Some(IncomingState::Gone)),
            SourceVerdict::EndedHere { lost: true, .. }
        ));
        // Another migration's handoff is not this one's.
        let other = gone(handoff(Side::Source, "other"), None);
        assert!(matches!(
            source("m", &other, None),
            SourceVerdict::EndedHere { lost: true, .. }
        ));
        // A source that says it migrated did.
        let migrated = gone(
            handoff(Side::Source, "m"),
            Some(Exit::Stopped {
                stop: StopReason::Migrated { target: "t".into() },
            }),
        );
        assert_eq!(source("m", &migrated, None), SourceVerdict::Moved { lost_there: false });
    }

    #[test]
    fn a_silent_source_is_over_only_once_the_target_gave_up() {
        let silent = Observed::Silent {
            stopped: true,
            record: None,
        };
        assert_eq!(source("m", &silent, None), SourceVerdict::AskTarget);
        assert_eq!(
            source("m", &silent, Some(IncomingState::Undecided)),
            SourceVerdict::Pending
        );
        assert_eq!(
            source("m", &silent, Some(IncomingState::Gone)),
            SourceVerdict::Frozen { stopped: true }
        );
    }

    #[test]
    fn a_target_is_gone_only_when_nothing_there_can_commit() {
        let waiting = Observed::Answers(VmStatus {
            state: None,
            incoming: Some(IncomingStatus {
                migration: Some("m".into()),
                phase: Phase::Receiving,
            }),
            ..status()
        });
        assert_eq!(arrival("m", &waiting), IncomingState::Undecided);
        let gave_up = Observed::Answers(VmStatus {
            state: None,
            incoming: Some(IncomingStatus {
                migration: Some("m".into()),
                phase: Phase::Discarded,
            }),
            ..status()
        });
        assert_eq!(arrival("m", &gave_up), IncomingState::Gone);
        assert_eq!(arrival("m", &Observed::Answers(status())), IncomingState::Running);
        // Silent: it may still commit on a Go it holds, unless it did.
        let silent = |handoff| Observed::Silent {
            stopped: true,
            record: Some(VmmRecord {
                pid: 10,
                listening: None,
                handoff,
                exit: None,
                console_start: None,
            }),
        };
        assert_eq!(arrival("m", &silent(None)), IncomingState::Undecided);
        assert_eq!(
            arrival("m", &silent(handoff(Side::Target, "m"))),
            IncomingState::Running
        );
        // Dead: lost if it had committed, else it never will; stopped if
        // it committed and then stopped its VM.
        let stopped = Some(Exit::Stopped {
            stop: StopReason::Requested,
        });
        assert_eq!(
            arrival("m", &gone(handoff(Side::Target, "m"), stopped)),
            IncomingState::Stopped
        );
        assert_eq!(
            arrival("m", &gone(handoff(Side::Target, "m"), None)),
            IncomingState::Lost
        );
        assert_eq!(arrival("m", &Observed::Gone(None)), IncomingState::Gone);
        assert_eq!(
            arrival(
                "m",
                &gone(
                    None,
                    Some(Exit::NotReceived {
                        code: "no_sender".into(),
                        detail: "no sender came".into()
                    })
                )
            ),
            IncomingState::Gone
        );
    }
}
