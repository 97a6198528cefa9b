//! A worker's side of a configuration reload: new listening sockets start their accept loops,
//! removed ones stop accepting (their connections finish), kept ones switch to their new plan,
//! and the group mirrors are rebuilt against the new table (pools of targets that left drained).
//!
//! Runs on the worker's thread, as one task that waits for the main thread's messages; all the
//! state it touches is the worker's own (`RefCell`s on `Worker`).

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{ListenerPlan, Worker};
use crate::guard::Guard;
use crate::io::Listener;
use crate::reload::Update;
use crate::target::Table;

impl Worker {
    /// The current plan of listener `index`; `None` once a reload removed it.
    pub fn plan(&self, index: usize) -> Option<Arc<ListenerPlan>> {
        self.plans.borrow().get(index).cloned().flatten()
    }

    /// True while `plan` is its listener's current plan (no reload replaced it). Takes no
    /// reference: the plan's count is shared with every worker.
    pub fn plan_is(&self, plan: &Arc<ListenerPlan>) -> bool {
        self.plans
            .borrow()
            .get(plan.index)
            .is_some_and(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, plan)))
    }

    /// Makes `plan` the current one of its listener: its guard (kept when the limits are
    /// unchanged) and its latency recorder (kept: a kept listener keeps its stats).
    pub(super) fn install_plan(&self, plan: &Arc<ListenerPlan>) {
        let i = plan.index;
        let mut plans = self.plans.borrow_mut();
        if plans.len() <= i {
            plans.resize_with(i + 1, || None);
        }
        plans[i] = Some(plan.clone());
        let mut guards = self.guards.borrow_mut();
        if guards.len() <= i {
            guards.resize_with(i + 1, || None);
        }
        if guards[i].as_ref().is_none_or(|(l, _)| *l != plan.limits) {
            guards[i] = Some((plan.limits.clone(), Rc::new(Guard::new(&plan.limits))));
        }
        let mut recorders = self.recorders.borrow_mut();
        if recorders.len() <= i {
            recorders.resize_with(i + 1, || None);
        }
        if recorders[i].is_none() {
            recorders[i] = Some(plan.stats.recorder());
        }
    }

    /// Registers a listening socket and starts its accept loop.
    pub(super) fn listen(self: &Rc<Self>, plan: Arc<ListenerPlan>, sock: std::net::TcpListener) {
        let listener = match Listener::from_std(self.backend, sock) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %plan.name, error = %e, "cannot register listening socket");
                return;
            }
        };
        self.listener_fds
            .borrow_mut()
            .push((plan.index, listener.as_raw_fd()));
        let task =
            tokio::task::spawn_local(crate::listener::accept_loop(self.clone(), plan, listener));
        self.accept_loops.borrow_mut().push(task);
    }

    /// Applies reloads until the main thread drops its sender (drain).
    pub(super) async fn follow_updates(self: Rc<Self>, mut updates: UnboundedReceiver<Update>) {
        while let Some(u) = updates.recv().await {
            if self.is_draining() {
                break;
            }
            self.apply(u);
        }
    }

    fn apply(self: &Rc<Self>, u: Update) {
        for index in &u.remove {
            if let Some(p) = self.plans.borrow_mut().get_mut(*index) {
                *p = None;
            }
            // Completes the pending accept with an error; the loop sees the plan gone and ends.
            self.listener_fds.borrow_mut().retain(|(i, fd)| {
                if i == index {
                    unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
                    false
                } else {
                    true
                }
            });
        }
        for plan in &u.snapshot.listeners {
            self.install_plan(plan);
        }
        for (plan, sock) in u.add {
            self.listen(plan, sock);
        }
        self.remirror(&u.snapshot.table);
        self.changes.notify_waiters();
        let _ = u.applied.send(());
    }

    /// Rebuilds the mirror of every group of the new table, keeping the pools of targets that
    /// stay and draining those of targets that left. Old mirrors become stale ones (connections
    /// on an older plan rebuild theirs on demand).
    fn remirror(&self, table: &Table) {
        let mut groups = self.groups.borrow_mut();
        let mut stale = self.stale.borrow_mut();
        stale.clear();
        let old: Vec<_> = groups.drain(..).collect();
        groups.resize_with(table.groups.len(), || None);
        let reuse: Vec<_> = old
            .iter()
            .flatten()
            .flat_map(|lg| lg.targets.iter().cloned())
            .collect();
        let mut kept_ids = Vec::new();
        for g in &table.groups {
            let fresh = self.mirror(g, &reuse, None);
            kept_ids.extend(fresh.targets.iter().map(|t| t.target.id));
            if let Some(slot) = groups.get_mut(g.index) {
                *slot = Some(fresh);
            }
        }
        for lg in old.into_iter().flatten() {
            // Requests waiting in the old queue pick again (in their own generation's mirror).
            lg.queue.release_all();
            for t in &lg.targets {
                if !kept_ids.contains(&t.target.id) {
                    t.retire();
                }
            }
        }
    }
}
