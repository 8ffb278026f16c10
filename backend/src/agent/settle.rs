//! The settler: every second (and once as the agent starts) the agent looks
//! at what no request waits for: arrivals whose VMM now runs the VM or
//! ended without it, departures that nobody follows any more (the agent
//! restarted during them, or their outcome was in doubt), and VMMs it
//! adopted after a restart that have since ended. A VMM has no way to call
//! its agent, so it is looked at.

use std::sync::Arc;
use std::time::Duration;

use super::judge::SourceVerdict;
use super::outgoing::Claim;
use super::vmm::Observed;
use super::{Agent, View};
use crate::api::MigrationPhase;

/// How often the settler looks.
const EVERY: Duration = Duration::from_secs(1);

impl Agent {
    pub(super) fn keep_settling(self: &Arc<Self>) {
        let agent = Arc::downgrade(self);
        let _ = std::thread::Builder::new().name("settle".into()).spawn(move || {
            loop {
                std::thread::sleep(EVERY);
                let Some(agent) = agent.upgrade() else {
                    return;
                };
                agent.settle_all();
            }
        });
    }

    pub(super) fn settle_all(self: &Arc<Self>) {
        let views: Vec<(String, View)> = self.vms().iter().map(|(name, vm)| (name.clone(), vm.view())).collect();
        for (name, view) in views {
            let record = &view.record;
            if let Some(arrival) = &record.arrival {
                self.settle_arrival(&name, &arrival.id, &arrival.source, &view.dir, record.pid);
            } else if let Some(departure) = &record.departure {
                if self.migrations.running(&name).is_some() || !self.start_settling(&name) {
                    continue;
                }
                let claim = Claim {
                    name: name.clone(),
                    dir: view.dir.clone(),
                    spec: record.spec.clone(),
                    pid: record.pid.unwrap_or(0),
                    target: departure.target.clone(),
                };
                let id = departure.id.clone();
                // Known to watchers at once (a client that comes back asks).
                if self.migrations.get(&id).is_none() {
                    self.migrations
                        .insert(&id, &name, &claim.target.name, MigrationPhase::Settling);
                }
                let agent = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name(format!("settle-{name}"))
                    .spawn(move || {
                        agent.settle_orphan(&claim, &id);
                        agent.done_settling(&claim.name);
                    });
                if spawned.is_err() {
                    self.done_settling(&name);
                }
            } else if let Some(pid) = record.pid
                && matches!(view.dir.observe(pid), Observed::Gone(_))
            {
                // An adopted VMM has no reaper; a child's end may have come
                // while a migration still held the VM. Judged once, either way.
                self.vmm_ended(&name, pid);
            }
        }
    }

    /// A departure that no thread follows: decide it if the facts can.
    fn settle_orphan(self: &Arc<Self>, claim: &Claim, id: &str) {
        let outcome = match self.judge_departure(claim, id) {
            SourceVerdict::Pending | SourceVerdict::AskTarget => {
                // A VMM that still migrates is followed to its end; anything
                // else waits for the next look.
                let migrating = matches!(claim.dir.observe(claim.pid),
                    Observed::Answers(s) if s.migration.as_deref() == Some(id));
                if !migrating {
                    return;
                }
                self.settle_departure(claim, 0, self.settle_time())
            }
            decided => self.act(claim, decided, 0),
        };
        self.conclude(id, &claim.name, &claim.target.name, outcome);
    }

    /// Marks `name` as being settled; false when it is already.
    fn start_settling(&self, name: &str) -> bool {
        self.settling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string())
    }

    fn done_settling(&self, name: &str) {
        self.settling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}
