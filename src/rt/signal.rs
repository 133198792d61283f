//! Wake-ups across and within worker threads.
//!
//! - [`Inbox`]: many senders on any thread, one async receiver on a worker
//!   (crossbeam's lock-free queue plus an atomic waker).
//! - [`Broadcast`]: a process-wide state (running, draining, closing) that any
//!   thread can advance; one waiter per worker.
//! - [`LocalSignal`]: fan-out inside one worker to every connection task,
//!   without locks; each waiter holds one slot, so re-polling never grows it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

/// A multi-producer, single-consumer mailbox whose consumer is a task.
#[derive(Debug, Default)]
pub struct Inbox<T> {
    queue: SegQueue<T>,
    waker: AtomicWaker,
}

impl<T> Inbox<T> {
    pub fn new() -> Self {
        Inbox { queue: SegQueue::new(), waker: AtomicWaker::new() }
    }

    /// Sends from any thread.
    pub fn send(&self, item: T) {
        self.queue.push(item);
        self.waker.wake();
    }

    /// Receives the next item. Only one task may wait at a time.
    pub async fn recv(&self) -> T {
        poll_fn(|cx| {
            if let Some(item) = self.queue.pop() {
                return Poll::Ready(item);
            }
            self.waker.register(cx.waker());
            // Re-check: a send may have landed between pop and register.
            match self.queue.pop() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    pub fn try_recv(&self) -> Option<T> {
        self.queue.pop()
    }
}

/// Server lifecycle stages, in order.
pub const RUNNING: u8 = 0;
/// Stop accepting; close idle sessions; let transactions finish.
pub const DRAINING: u8 = 1;
/// Grace period over: close everything that is not storing a message.
pub const CLOSING: u8 = 2;

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
            stage: AtomicU8::new(RUNNING),
            wakers: (0..workers).map(|_| AtomicWaker::new()).collect(),
        })
    }

    pub fn stage(&self) -> u8 {
        self.stage.load(Ordering::Acquire)
    }

    /// Moves to `stage` if that is later than now, and wakes every worker.
    pub fn advance(&self, stage: u8) {
        self.stage.fetch_max(stage, Ordering::AcqRel);
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Waits (on worker `slot`) until the stage is later than `seen`.
    pub async fn changed(&self, slot: usize, seen: u8) -> u8 {
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
    stage: Cell<u8>,
    next_slot: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl LocalSignal {
    pub fn stage(&self) -> u8 {
        self.stage.get()
    }

    pub fn set(&self, stage: u8) {
        if stage > self.stage.get() {
            self.stage.set(stage);
            for (_, w) in self.waiters.borrow_mut().drain() {
                w.wake();
            }
        }
    }

    /// Waits until the stage is later than `seen`.
    pub fn changed(&self, seen: u8) -> Changed<'_> {
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
    seen: u8,
}

impl std::future::Future for Changed<'_> {
    type Output = u8;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<u8> {
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
    fn inbox_delivers_across_threads() {
        let inbox = Arc::new(Inbox::new());
        let tx = inbox.clone();
        let t = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i);
            }
        });
        t.join().unwrap();
        let mut got = Vec::new();
        while let Some(i) = inbox.try_recv() {
            got.push(i);
        }
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn broadcast_only_advances() {
        let b = Broadcast::new(2);
        b.advance(CLOSING);
        b.advance(DRAINING);
        assert_eq!(b.stage(), CLOSING);
    }

    #[test]
    fn local_signal_slots_do_not_grow() {
        let s = LocalSignal::default();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = Box::pin(s.changed(RUNNING));
        for _ in 0..100 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.waiters.borrow().len(), 1);
        drop(fut);
        assert_eq!(s.waiters.borrow().len(), 0);
        s.set(DRAINING);
        let mut fut = Box::pin(s.changed(RUNNING));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(DRAINING));
    }
}
