//! Requests across threads: many senders on any thread, one async receiver
//! on a worker (crossbeam's lock-free queue plus an atomic waker).

use std::future::poll_fn;
use std::task::Poll;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
}
