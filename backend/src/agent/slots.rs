//! A host's migration budget: migrations take cost units, and those that do
//! not fit wait in a first-come queue instead of failing or overloading the
//! host (vMotion's host and network costs, in one number).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// How often a waiter asks whether it still wants its slot.
pub const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug)]
pub struct Slots {
    limit: u32,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    in_use: u32,
    /// Tickets waiting, oldest first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// Cost units held until dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    cost: u32,
}

impl Slots {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `cost` units, waiting in line while they are not free;
    /// `queued(position)` is called whenever the place in line changes
    /// (1 = next), never when the units were free at once. While it waits,
    /// `keep_going()` is asked at least every [`RECHECK`]; when it says no,
    /// the place in line is given up and None returned.
    pub fn acquire(
        self: &Arc<Self>,
        cost: u32,
        mut queued: impl FnMut(u32),
        mut keep_going: impl FnMut() -> bool,
    ) -> Option<Slot> {
        let cost = cost.clamp(1, self.limit);
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(ticket);
        let mut reported = None;
        loop {
            let position = state.queue.iter().position(|t| *t == ticket).unwrap_or(0);
            if position == 0 && state.in_use + cost <= self.limit {
                state.queue.pop_front();
                state.in_use += cost;
                // The next in line may fit too.
                self.changed.notify_all();
                return Some(Slot {
                    slots: Arc::clone(self),
                    cost,
                });
            }
            let place = position as u32 + 1;
            if reported != Some(place) {
                reported = Some(place);
                // Report without holding the lock: the callback may do I/O.
                drop(state);
                queued(place);
                state = self.lock();
                continue;
            }
            state = self
                .changed
                .wait_timeout(state, RECHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            drop(state);
            let going = keep_going();
            state = self.lock();
            if !going {
                state.queue.retain(|t| *t != ticket);
                self.changed.notify_all();
                return None;
            }
        }
    }

    /// (units in use, the limit, migrations waiting).
    pub fn usage(&self) -> (u32, u32, u32) {
        let state = self.lock();
        (state.in_use, self.limit, state.queue.len() as u32)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.in_use -= self.cost;
        self.slots.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    #[test]
    fn excess_waits_in_order_and_runs_when_units_free() {
        let slots = Slots::new(2);
        let first = slots.acquire(2, |_| panic!("the first fits"), || true).unwrap();
        let (tx, rx) = channel();
        let mut waiters = Vec::new();
        for name in ["second", "third"] {
            let shared = Arc::clone(&slots);
            let tx = tx.clone();
            waiters.push(std::thread::spawn(move || {
                let mut places = Vec::new();
                let slot = shared.acquire(2, |p| places.push(p), || true).unwrap();
                tx.send((name, places)).unwrap();
                drop(slot);
            }));
            // Line up in a known order.
            while slots.usage().2 < if name == "second" { 1 } else { 2 } {
                std::thread::yield_now();
            }
        }
        assert_eq!(slots.usage(), (2, 2, 2));
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "nobody may start while it is full"
        );
        drop(first);
        let (name, places) = rx.recv().unwrap();
        assert_eq!((name, places), ("second", vec![1]));
        let (name, places) = rx.recv().unwrap();
        assert_eq!(name, "third");
        assert_eq!(places.first(), Some(&2));
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(slots.usage(), (0, 2, 0));
    }

    #[test]
    fn a_cost_above_the_limit_still_runs_alone() {
        let slots = Slots::new(4);
        let slot = slots.acquire(9, |_| panic!("free"), || true).unwrap();
        assert_eq!(slots.usage().0, 4);
        drop(slot);
        let a = slots.acquire(1, |_| panic!("free"), || true).unwrap();
        let b = slots.acquire(3, |_| panic!("fits"), || true).unwrap();
        assert_eq!(slots.usage().0, 4);
        drop((a, b));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line() {
        let slots = Slots::new(1);
        let held = slots.acquire(1, |_| {}, || true).unwrap();
        let mut asked = 0;
        let gave_up = slots.acquire(
            1,
            |_| {},
            || {
                asked += 1;
                asked < 3
            },
        );
        assert!(gave_up.is_none());
        assert_eq!(slots.usage(), (1, 1, 0), "its place in line is gone");
        drop(held);
        assert!(slots.acquire(1, |_| panic!("free"), || true).is_some());
    }
}
