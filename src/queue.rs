//! The request queue of a target group with `max_connections`: requests that find every eligible
//! target at its limit wait here in FIFO order, and each slot that frees on any target of the
//! group goes to the request at the head of the queue.
//!
//! Runs on one worker thread: each worker keeps its own queue per group (`Rc`, `Cell`), as it
//! keeps its own limit per target. A freed slot is handed over: the woken request is the next to
//! pick, and requests arriving meanwhile queue behind it instead of taking the slot first.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use tokio::time::Instant;

use crate::sticky::Token;

/// One waiting request.
#[derive(Default)]
struct Waiter {
    /// A request pinned to one target (stickiness) takes only a slot freed there.
    pinned: Option<Token>,
    waker: RefCell<Option<Waker>>,
    /// A slot was handed to it.
    woken: Cell<bool>,
    /// It stopped waiting (timed out or its client left) before a slot came.
    gone: Cell<bool>,
}

/// A group's queue on one worker.
#[derive(Default)]
pub struct Waitlist {
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// Slots handed to woken requests that have not picked yet.
    handoffs: Cell<u32>,
    /// Requests waiting now.
    waiting: Cell<u32>,
    /// Of them, those not pinned to one target (any slot serves them).
    waiting_any: Cell<u32>,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// A slot freed: pick again.
    Slot,
    /// `queue_timeout` passed.
    TimedOut,
}

impl Waitlist {
    /// True when requests that any slot would serve are waiting, or a handed slot is about to
    /// be taken: a newcomer queues behind them. (Requests waiting for their pinned target hold
    /// up no one: a slot elsewhere is not theirs.)
    pub fn busy(&self) -> bool {
        self.waiting_any.get() > 0 || self.handoffs.get() > 0
    }

    /// Requests waiting now.
    pub fn len(&self) -> u32 {
        self.waiting.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot freed on the target named `freed`: the first waiting request that may take it
    /// gets it (`None`: any, for [`Waitlist::release_all`]).
    pub fn release(&self, freed: Option<&Token>) {
        let mut waiters = self.waiters.borrow_mut();
        waiters.retain(|w| !w.gone.get());
        let at = waiters.iter().position(|w| match (&w.pinned, freed) {
            (Some(p), Some(f)) => p == f,
            _ => true,
        });
        let Some(w) = at.and_then(|i| waiters.remove(i)) else {
            return;
        };
        w.woken.set(true);
        self.handoffs.set(self.handoffs.get() + 1);
        let waker = w.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Every waiting request picks again (the group's targets changed).
    pub fn release_all(&self) {
        while !self.waiters.borrow().is_empty() {
            self.release(None);
        }
    }

    /// Waits for a slot until `deadline`. `front`: a request that was handed a slot and lost it
    /// waits first in line again.
    pub async fn wait(&self, deadline: Instant, front: bool, pinned: Option<Token>) -> Waited {
        let me = Rc::new(Waiter {
            pinned,
            ..Waiter::default()
        });
        {
            let mut waiters = self.waiters.borrow_mut();
            if front {
                waiters.push_front(me.clone());
            } else {
                waiters.push_back(me.clone());
            }
        }
        self.waiting.set(self.waiting.get() + 1);
        if pinned.is_none() {
            self.waiting_any.set(self.waiting_any.get() + 1);
        }
        struct Leave<'a>(&'a Waitlist, Rc<Waiter>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let (list, me) = (self.0, &self.1);
                list.waiting.set(list.waiting.get().saturating_sub(1));
                if me.pinned.is_none() {
                    list.waiting_any
                        .set(list.waiting_any.get().saturating_sub(1));
                }
                if me.woken.get() {
                    // The handed slot is this request's to use (or, gone, the next one's).
                    list.handoffs.set(list.handoffs.get().saturating_sub(1));
                } else {
                    me.gone.set(true);
                }
            }
        }
        let leave = Leave(self, me.clone());
        let woken = poll_fn(|cx| {
            if me.woken.get() {
                return Poll::Ready(());
            }
            *me.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        let res = match tokio::time::timeout_at(deadline, woken).await {
            Ok(()) => Waited::Slot,
            Err(_) => Waited::TimedOut,
        };
        drop(leave);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_go_to_waiters_in_order_and_late_ones_time_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let q = Rc::new(Waitlist::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let far = Instant::now() + Duration::from_secs(5);
            let mut tasks = Vec::new();
            for i in 0..3 {
                let (q, order) = (q.clone(), order.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let r = q.wait(far, false, None).await;
                    order.borrow_mut().push(i);
                    r
                }));
                tokio::task::yield_now().await;
            }
            assert_eq!(q.len(), 3);
            assert!(q.busy());
            q.release(None);
            q.release(None);
            tokio::task::yield_now().await;
            assert_eq!(*order.borrow(), vec![0, 1]);
            // The third times out when its deadline passes.
            let soon = q
                .wait(Instant::now() + Duration::from_millis(30), false, None)
                .await;
            assert_eq!(soon, Waited::TimedOut);
            q.release(None);
            for t in tasks {
                assert_eq!(t.await.expect("task"), Waited::Slot);
            }
            assert_eq!(*order.borrow(), vec![0, 1, 2]);
            assert!(!q.busy(), "every handoff was taken");
        });
    }

    #[test]
    fn a_pinned_request_takes_only_its_targets_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let q = Rc::new(Waitlist::default());
            let far = Instant::now() + Duration::from_secs(5);
            let (a, b) = ([1u8; 12], [2u8; 12]);
            let pinned = {
                let q = q.clone();
                tokio::task::spawn_local(async move { q.wait(far, false, Some(a)).await })
            };
            tokio::task::yield_now().await;
            let free = {
                let q = q.clone();
                tokio::task::spawn_local(async move { q.wait(far, false, None).await })
            };
            tokio::task::yield_now().await;
            // A slot on b skips the request pinned to a and goes to the next one.
            q.release(Some(&b));
            assert_eq!(free.await.expect("task"), Waited::Slot);
            assert_eq!(q.len(), 1);
            q.release(Some(&a));
            assert_eq!(pinned.await.expect("task"), Waited::Slot);
        });
    }
}
