//! Stores batches of our own messages (the injection API, the maildrop):
//! charged to the memory budget, DKIM-signed, appended to the worker's
//! spool, and, once the commit is durable, queued with their `Reception`
//! events. Each message carries a tag (a recipient, a file) its outcome is
//! reported under.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::clock::unix_millis;
use super::conn::sign_each;
use super::ctx::WorkerCtx;
use crate::envelope::Envelope;
use crate::events::{self, EventType};
use crate::metrics::inc;
use crate::spool::{AppendError, Ticket};

/// Messages on their way into the spool.
pub struct Batch<T> {
    messages: Vec<(T, Envelope, Vec<u8>)>,
    /// Spooled: the tag, the envelope, its size and the commit's ticket.
    tickets: Vec<(T, Envelope, u64, Ticket)>,
    /// Bytes of the memory budget held until the commit.
    charged: usize,
}

impl<T> std::fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("messages", &self.messages.len())
            .field("spooled", &self.tickets.len())
            .field("charged", &self.charged)
            .finish()
    }
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch { messages: Vec::new(), tickets: Vec::new(), charged: 0 }
    }
}

impl<T> Batch<T> {
    pub fn push(&mut self, tag: T, env: Envelope, body: Vec<u8>) {
        self.messages.push((tag, env, body));
    }

    /// Signs the messages and hands them to the spool (no waiting for the
    /// disk). Those that cannot be are reported to `failed` with the reason.
    pub async fn spool(
        &mut self,
        dkim: &Arc<crate::dkim::Signers>,
        worker: &WorkerCtx,
        mut failed: impl FnMut(T, &str),
    ) {
        let messages = std::mem::take(&mut self.messages);
        // The content, its signatures and the spool's copy.
        let bytes: usize = messages.iter().map(|(_, _, b)| 2 * b.len() + 1024).sum();
        if !worker.memory.try_charge(bytes) {
            tracing::warn!(
                messages = messages.len(),
                "message memory budget spent; messages refused for now"
            );
            for (tag, _, _) in messages {
                failed(tag, "server busy, try again (memory)");
            }
            return;
        }
        self.charged += bytes;
        let (tags, messages): (Vec<T>, Vec<(Envelope, Vec<u8>)>) =
            messages.into_iter().map(|(t, e, b)| (t, (e, b))).unzip();
        let (messages, signatures) = sign_each(dkim, messages).await;
        if messages.len() != tags.len() {
            // The signing task died and took the messages with it.
            tracing::error!(messages = tags.len(), "DKIM signing task failed; messages refused");
            for tag in tags {
                failed(tag, "signing failed (451 4.3.0)");
            }
            return;
        }
        for ((tag, (env, body)), sig) in tags.into_iter().zip(messages).zip(signatures) {
            let Ok(sig) = sig else {
                tracing::error!(id = %env.id, "DKIM signing failed; message refused");
                failed(tag, "signing failed (451 4.3.0)");
                continue;
            };
            let size = (sig.len() + body.len()) as u64;
            let ticket = worker.spool.append_message(&env, &sig, &body);
            self.tickets.push((tag, env, size, ticket));
        }
    }

    /// Waits for the commit, then queues what is durable and reports every
    /// spooled message's outcome to `done`.
    pub async fn settle(self, worker: &WorkerCtx, mut done: impl FnMut(T, Result<(), &str>)) {
        let log = worker.owner.events();
        let mut received = Vec::new();
        let m = &worker.metrics;
        for (tag, env, size, ticket) in self.tickets {
            match ticket.await {
                Ok(Ok(_)) => {
                    inc(&m.messages_accepted);
                    m.bytes_accepted.fetch_add(size, Ordering::Relaxed);
                    if log.enabled() {
                        let mut e = events::Event::about(EventType::Reception, &env, size, unix_millis());
                        e.recipients = env.recipients.iter().map(|r| r.address.to_string()).collect();
                        received.push(e);
                    }
                    worker.owner.enqueue_new(&env);
                    done(tag, Ok(()));
                }
                Ok(Err(AppendError::TooBig)) => done(tag, Err("message too big (552 5.3.4)")),
                Ok(Err(AppendError::Unstorable(_))) => done(tag, Err("message not storable (451 4.3.0)")),
                Ok(Err(e)) => {
                    inc(&m.spool_failures);
                    tracing::warn!(error = %e, "message not stored");
                    done(tag, Err("spool failure, try again (452 4.3.1)"));
                }
                Err(_) => done(tag, Err("spool failure, try again (452 4.3.1)")),
            }
        }
        log.emit(received);
        worker.memory.release(self.charged);
    }
}
