//! The start-up hold. A freshly started proxy knows only its plugin configuration, whose
//! weight may be long out of date: routed by it, a canary user would see stable for a moment.
//! So until this worker has the controller's first configuration, for at most the poll's
//! timeout (plus one sync period), a request waits (`Action::Pause`) in a per-worker list of
//! context ids: O(1) per request. When the answer comes, or the time is up, the root routes
//! each waiting request with the configuration it then has (the request's own HTTP context
//! is not reachable from the root, so the root runs the same routing in a stand-in context
//! whose state the request's context adopts at its next callback) and resumes it.
//!
//! Generic over the stand-in's type: a plain module, imported by `host`, importing nothing.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Requests that wait at most per worker; beyond that they are routed at once.
const MAX_HELD: usize = 10_000;

/// Where the root leaves a released request's state for its context to adopt.
pub type Slot<T> = Rc<RefCell<Option<T>>>;

pub struct Hold<T> {
    /// Until when requests wait (ms); 0: not holding.
    until_ms: Cell<u64>,
    waiting: RefCell<Vec<Waiting<T>>>,
}

pub struct Waiting<T> {
    pub context_id: u32,
    pub end_of_stream: bool,
    /// Shared with the request's context: held here only when the request ended while
    /// waiting (a `Weak` would cost the module more).
    pub slot: Slot<T>,
}

impl<T> Default for Hold<T> {
    fn default() -> Self {
        Hold {
            until_ms: Cell::new(0),
            waiting: RefCell::new(Vec::new()),
        }
    }
}

impl<T> Waiting<T> {
    /// Whether the request still exists (its context holds the other reference).
    pub fn waiting(&self) -> bool {
        Rc::strong_count(&self.slot) > 1
    }
}

impl<T> Hold<T> {
    pub fn start(&self, until_ms: u64) {
        self.until_ms.set(until_ms.max(1));
    }

    pub fn active(&self) -> bool {
        self.until_ms.get() != 0
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms.get()
    }

    /// Puts request `context_id` on the wait list if the hold is on; its slot if so. The
    /// root ends the hold at its first tick past the time (no clock read per request).
    pub fn wait(&self, context_id: u32, end_of_stream: bool) -> Option<Slot<T>> {
        if !self.active() {
            return None;
        }
        let mut waiting = self.waiting.try_borrow_mut().ok()?;
        if waiting.len() >= MAX_HELD {
            return None;
        }
        let slot = Rc::new(RefCell::new(None));
        waiting.push(Waiting {
            context_id,
            end_of_stream,
            slot: slot.clone(),
        });
        Some(slot)
    }

    /// Ends the hold: the requests that wait, in arrival order.
    pub fn release(&self) -> Vec<Waiting<T>> {
        self.until_ms.set(0);
        self.waiting
            .try_borrow_mut()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_only_while_the_hold_is_on() {
        let hold: Hold<&str> = Hold::default();
        assert!(hold.wait(1, true).is_none(), "off until started");
        hold.start(1_000);
        let first = hold.wait(7, true).expect("held");
        let second = hold.wait(8, false).expect("held");
        assert!(!hold.expired(999) && hold.expired(1_000));
        drop(second); // that request ended while waiting
        let waiting = hold.release();
        assert!(!hold.active() && hold.wait(10, true).is_none());
        let ids: Vec<_> = waiting
            .iter()
            .map(|w| (w.context_id, w.end_of_stream))
            .collect();
        assert_eq!(ids, [(7, true), (8, false)]);
        let still: Vec<_> = waiting.iter().map(Waiting::waiting).collect();
        assert_eq!(still, [true, false]);
        *waiting[0].slot.borrow_mut() = Some("routed");
        assert_eq!(first.borrow_mut().take(), Some("routed"));
    }

    #[test]
    fn the_wait_list_is_bounded() {
        let hold: Hold<()> = Hold::default();
        hold.start(u64::MAX);
        let slots: Vec<_> = (0..MAX_HELD as u32)
            .filter_map(|i| hold.wait(i, true))
            .collect();
        assert_eq!(slots.len(), MAX_HELD);
        assert!(hold.wait(0, true).is_none());
    }
}
