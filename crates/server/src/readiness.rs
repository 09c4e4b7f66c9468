//! Whether this node should be sent new clients: the answer `/readyz` gives.
//!
//! Liveness (`/livez`) only says the process serves HTTP. Readiness is lost while the change
//! source is down, while a component reports a problem that needs an operator (e.g.
//! parse-server refusing the master key from this address), and from the moment a graceful
//! drain begins, so a load balancer stops routing here before sockets are closed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use parking_lot::Mutex;

/// Problems that make this node unready, and the drain flag. Shared by every component
/// that can report one (`Arc<Readiness>`).
#[derive(Debug, Default)]
pub struct Readiness {
    /// Set once a graceful drain begins; never cleared.
    draining: AtomicBool,
    /// Component name → what is wrong, in words an operator can act on. A mutex: written
    /// only when a problem appears or heals, read by `/readyz`.
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    /// Records (or replaces) `component`'s problem.
    pub fn set_problem(&self, component: &'static str, message: impl Into<String>) {
        self.problems.lock().insert(component, message.into());
    }

    /// Clears `component`'s problem, if it had one.
    pub fn clear_problem(&self, component: &'static str) {
        self.problems.lock().remove(component);
    }

    /// The current problems, by component.
    pub fn problems(&self) -> BTreeMap<&'static str, String> {
        self.problems.lock().clone()
    }

    /// Marks the node as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether a graceful drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_set_replaced_and_cleared_per_component() {
        let readiness = Readiness::default();
        assert!(readiness.problems().is_empty());
        readiness.set_problem("parse_server", "403");
        readiness.set_problem("parse_server", "403 again");
        readiness.set_problem("source", "down");
        assert_eq!(readiness.problems().len(), 2);
        assert_eq!(readiness.problems()["parse_server"], "403 again");
        readiness.clear_problem("parse_server");
        assert_eq!(
            readiness.problems().keys().copied().collect::<Vec<_>>(),
            ["source"]
        );
        assert!(!readiness.is_draining());
        readiness.start_draining();
        assert!(readiness.is_draining());
    }
}
