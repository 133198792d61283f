//! The server's lifecycle stage and how it reaches every task.
//!
//! - [`Stage`]: running, draining (SIGTERM: no new sessions, idle ones
//!   close, transactions finish), closing (the grace period is over).
//! - [`Broadcast`]: the process-wide stage, which any thread can advance;
//!   one waiter per worker.
//! - [`LocalSignal`]: fan-out inside one worker to every connection task,
//!   without locks; each waiter holds one slot, so re-polling never grows it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;

/// Server lifecycle stages, in order: a stage only ever advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum Stage {
    #[default]
    Running = 0,
    /// Stop accepting; close idle sessions; let transactions finish.
    Draining = 1,
    /// Grace period over: close everything that is not storing a message.
    Closing = 2,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Running,
            1 => Stage::Draining,
            _ => Stage::Closing,
        }
    }
}

/// A monotonically advancing stage shared by all threads.
#[derive(Debug)]
pub struct Broadcast {
    stage: AtomicU8,
    wakers: Vec<AtomicWaker>,
}

impl Broadcast {
    /// One waiter slot per worker.
    pub fn new(workers: usize) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            stage: AtomicU8::new(Stage::Running as u8),
            wakers: (0..workers).map(|_| AtomicWaker::new()).collect(),
        })
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Moves to `stage` if that is later than now, and wakes every worker.
    pub fn advance(&self, stage: Stage) {
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Waits (on worker `slot`) until the stage is later than `seen`.
    pub async fn changed(&self, slot: usize, seen: Stage) -> Stage {
        poll_fn(|cx| {
            let now = self.stage();
            if now > seen {
                return Poll::Ready(now);
            }
            self.wakers[slot].register(cx.waker());
            let now = self.stage();
            if now > seen {
                Poll::Ready(now)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A worker-local stage signal that every connection task can wait on.
#[derive(Debug, Default)]
pub struct LocalSignal {
    stage: Cell<Stage>,
    next_slot: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl LocalSignal {
    pub fn stage(&self) -> Stage {
        self.stage.get()
    }

    pub fn set(&self, stage: Stage) {
        if stage > self.stage.get() {
            self.stage.set(stage);
            for (_, w) in self.waiters.borrow_mut().drain() {
                w.wake();
            }
        }
    }

    /// Waits until the stage is later than `seen`.
    pub fn changed(&self, seen: Stage) -> Changed<'_> {
        let slot = self.next_slot.get();
        self.next_slot.set(slot + 1);
        Changed { signal: self, slot, seen }
    }
}

/// Future returned by [`LocalSignal::changed`].
#[derive(Debug)]
pub struct Changed<'a> {
    signal: &'a LocalSignal,
    slot: u64,
    seen: Stage,
}

impl std::future::Future for Changed<'_> {
    type Output = Stage;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Stage> {
        let now = self.signal.stage.get();
        if now > self.seen {
            return Poll::Ready(now);
        }
        self.signal.waiters.borrow_mut().insert(self.slot, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.signal.waiters.borrow_mut().remove(&self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn broadcast_only_advances() {
        let b = Broadcast::new(2);
        b.advance(Stage::Closing);
        b.advance(Stage::Draining);
        assert_eq!(b.stage(), Stage::Closing);
    }

    #[test]
    fn local_signal_slots_do_not_grow() {
        let s = LocalSignal::default();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = Box::pin(s.changed(Stage::Running));
        for _ in 0..100 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.waiters.borrow().len(), 1);
        drop(fut);
        assert_eq!(s.waiters.borrow().len(), 0);
        s.set(Stage::Draining);
        let mut fut = Box::pin(s.changed(Stage::Running));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Stage::Draining));
    }
}
