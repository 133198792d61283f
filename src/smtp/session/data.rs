//! DATA and BDAT: receiving content, then handing the message to the shell.

use super::{received, Event, Message, Now, Phase, Session, StoreError, Transaction};
use crate::envelope::Envelope;
use crate::smtp::data::{ChunkReceiver, ContentVerdict, DotReceiver};
use crate::smtp::reply::{canned, EnhancedStatus, Reply};

/// More `Received:` headers than this (ours included) means a mail loop.
pub const MAX_RECEIVED: usize = 100;

/// Counts `Received:` header fields in the header section of `body`.
pub fn count_received(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Largest content buffer a session keeps between messages.
const RETAINED_BODY: usize = 64 * 1024;

/// Most content memory reserved up front for a declared `SIZE=`: enough to
/// receive typical messages without growing (and copying) the buffer, little
/// enough that declared sizes cannot make idle sessions expensive.
const MAX_RESERVED_BODY: u64 = 256 * 1024;

impl Session {
    /// Bytes of memory this session's message content takes now: the
    /// capacity of its buffer (a buffer grown by doubling can hold twice its
    /// content) plus, for content of a transaction, the copy the spool makes
    /// of it when it is stored. Between messages at most 64 KiB is kept.
    pub fn content_memory(&self) -> usize {
        match &self.message {
            Some(m) => m.body.capacity() + m.body.len() + self.body.capacity(),
            None if self.tx.is_some() => self.body.capacity() + self.body.len(),
            None => self.body.capacity(),
        }
    }

    /// The transaction is over without a message to store (RSET, EHLO, a
    /// refused message, ...): its content goes, and so does a big buffer.
    pub(super) fn end_transaction(&mut self) {
        self.tx = None;
        self.message_id = None;
        self.body.clear();
        if self.body.capacity() > RETAINED_BODY {
            self.body = Vec::new();
        }
    }

    /// The shell's memory budget for message content is spent: drop the
    /// content of the message being received (it will get `452 4.3.1`).
    pub fn handle_memory_pressure(&mut self) {
        let mut dropped = false;
        if let Phase::Data(rx) = &mut self.phase {
            rx.drop_content();
            dropped = true;
        }
        // BDAT content is held between chunks too.
        if let Some(rx) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) {
            rx.drop_content();
            dropped = true;
        }
        if dropped {
            self.body = Vec::new();
        }
    }

    /// Checks that a transaction may take content now; returns the reply if not.
    fn content_refusal(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(canned::NEED_MAIL),
            Some(tx) if tx.recipients.is_empty() && tx.refused > 0 => Some(canned::NO_VALID_RCPTS),
            Some(tx) if tx.recipients.is_empty() => Some(canned::NEED_RCPT),
            Some(_) => None,
        }
    }

    pub(super) fn handle_data(&mut self, now: Now) {
        if let Some(r) = self.content_refusal() {
            return self.error(&r);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.chunks.is_some()) {
            return self.error(&canned::DATA_AFTER_BDAT);
        }
        self.start_body(now);
        self.output.extend_from_slice(crate::smtp::reply::DATA_GO);
        self.deadline = now.instant + self.config.data_timeout;
        self.phase = Phase::Data(DotReceiver::new(self.config.max_message_size));
    }

    pub(super) fn handle_bdat(&mut self, size: u64, last: bool, now: Now) {
        self.deadline = now.instant + self.config.data_timeout;
        if let Some(reply) = self.content_refusal() {
            if size == 0 {
                return self.error(&reply);
            }
            // The chunk is on its way regardless; read past it, then refuse.
            self.phase = Phase::DiscardChunk { remaining: size, reply };
            return;
        }
        let limit = self.config.max_message_size;
        let started = self.tx.as_ref().is_some_and(|tx| tx.chunks.is_some());
        if !started {
            self.start_body(now);
        }
        let Some(tx) = self.tx.as_mut() else { return };
        // Line endings are checked in chunks as in DATA: BINARYMIME, the one
        // body type that would allow anything, is refused at MAIL.
        let chunks = tx.chunks.get_or_insert_with(|| ChunkReceiver::new(limit, true));
        chunks.begin_chunk(size);
        self.phase = Phase::Chunk { last };
        if size == 0 {
            self.chunk_complete(now);
        }
    }

    /// Starts a fresh body with our Received header.
    fn start_body(&mut self, now: Now) {
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        if let Some(tx) = &self.tx {
            let id = self.ids.borrow_mut().next(now.unix_secs);
            received::write_header(&mut body, self, tx, id, now.unix_secs);
            self.message_id = Some(id);
            // The client told us the size (RFC 1870): reserve it once rather
            // than doubling the buffer (a copy and fresh pages per doubling).
            if let Some(declared) = tx.params.size {
                let want = declared.min(self.config.max_message_size).min(MAX_RESERVED_BODY);
                body.reserve(want as usize);
            }
        }
        self.body = body;
    }

    pub(super) fn read_data(&mut self, input: &[u8], now: Now) -> usize {
        let Phase::Data(rx) = &mut self.phase else {
            return 0;
        };
        let (used, verdict) = rx.feed(input, &mut self.body);
        self.deadline = now.instant + self.config.data_timeout;
        if let Some(verdict) = verdict {
            self.finish_content(verdict, now);
        }
        used
    }

    pub(super) fn read_chunk(&mut self, input: &[u8], now: Now) -> usize {
        let Some(rx) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) else {
            return 0;
        };
        let used = rx.feed(input, &mut self.body);
        self.deadline = now.instant + self.config.data_timeout;
        if rx.chunk_done() {
            self.chunk_complete(now);
        }
        used
    }

    fn chunk_complete(&mut self, now: Now) {
        let Phase::Chunk { last } = self.phase else {
            return;
        };
        let Some(rx) = self.tx.as_mut().and_then(|tx| tx.chunks.as_mut()) else {
            return;
        };
        if last {
            let verdict = rx.finish();
            self.finish_content(verdict, now);
        } else {
            let text = format!("{} octets received", rx.size());
            self.reply(&Reply::owned(250, EnhancedStatus(2, 0, 0), text));
            self.await_command(now);
        }
    }

    pub(super) fn discard_chunk(&mut self, input: &[u8], now: Now) -> usize {
        let Phase::DiscardChunk { remaining, reply } = &mut self.phase else {
            return 0;
        };
        let n = (input.len() as u64).min(*remaining);
        *remaining -= n;
        if *remaining == 0 {
            let reply = reply.clone();
            self.await_command(now);
            self.error(&reply);
        }
        n as usize
    }

    /// The end of content: refuse, or hand the message to the shell.
    fn finish_content(&mut self, verdict: ContentVerdict, now: Now) {
        let refusal = match verdict {
            ContentVerdict::Ok if count_received(&self.body) > MAX_RECEIVED => Some(canned::TOO_MANY_HOPS),
            ContentVerdict::Ok => None,
            ContentVerdict::TooBig => Some(canned::TOO_BIG),
            ContentVerdict::BareNewline => Some(canned::BARE_NEWLINE),
            ContentVerdict::NoMemory => Some(canned::SPOOL_FAILED),
        };
        let tx = self.tx.take();
        match (refusal, tx, self.message_id.take()) {
            (None, Some(tx), Some(id)) => {
                let mut envelope = self.envelope(tx, id, now);
                let mut body = std::mem::take(&mut self.body);
                let ours = self.conn.trusted || self.auth_user.is_some();
                if ours {
                    // X-Tenant and X-Campaign are instructions to us: taken
                    // into the envelope and out of the message (before it is
                    // signed). A stranger's are left alone.
                    if let Some((tenant, campaign, rest)) = crate::mail::take_tenant_fields(&body) {
                        (envelope.tenant, envelope.campaign, body) = (tenant, campaign, rest);
                    }
                    // RFC 8689 §5, for mail we relay: a stranger's mail only
                    // comes to our own domains.
                    envelope.tls_not_required = crate::mail::tls_not_required(&body);
                    let user = self.auth_user.as_deref().and_then(|u| self.config.policy.user_tenant(u));
                    if let Some(t) = user {
                        envelope.tenant = Some(t.to_owned());
                    }
                }
                self.message = Some(Message { envelope, body, ours });
                self.phase = Phase::Blocked(Event::Store);
            }
            (refusal, _, _) => {
                self.refused_messages += 1;
                self.end_transaction();
                self.await_command(now);
                self.error(&refusal.unwrap_or(canned::NEED_MAIL));
            }
        }
    }

    fn envelope(&self, tx: Transaction, id: crate::envelope::QueueId, now: Now) -> Envelope {
        Envelope {
            id,
            received_at: now.unix_secs,
            reverse_path: tx.reverse_path,
            recipients: tx.recipients,
            body_type: tx.params.body,
            smtputf8: tx.params.smtputf8,
            ret: tx.params.ret,
            envid: tx.params.envid,
            client_ip: Some(self.conn.peer),
            helo: self.helo.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
            auth_user: self.auth_user.clone(),
            tenant: None,
            campaign: None,
            requiretls: tx.params.requiretls,
            tls_not_required: false,
        }
    }

    /// The shell's answer to [`Event::Store`]. Only `Ok` yields `250`.
    pub fn handle_stored(&mut self, result: Result<(), StoreError>, now: Now) {
        let Some(message) = self.message.take() else {
            return;
        };
        match result {
            Ok(()) => {
                let text = format!("Ok: queued as {}", message.envelope.id);
                self.reply(&Reply::owned(250, EnhancedStatus(2, 0, 0), text));
            }
            Err(StoreError::Temporary) => {
                self.refused_messages += 1;
                self.reply(&canned::SPOOL_FAILED);
            }
            Err(StoreError::Local) => {
                self.refused_messages += 1;
                self.reply(&canned::LOCAL_ERROR);
            }
            Err(StoreError::TooBig) => {
                self.refused_messages += 1;
                self.reply(&canned::TOO_BIG);
            }
        }
        // Keep the allocation for the next message, but not a big one: idle
        // sessions should cost little memory.
        let mut body = message.body;
        if body.capacity() <= RETAINED_BODY {
            body.clear();
            self.body = body;
        }
        self.await_command(now);
    }
}
