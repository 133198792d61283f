//! Compaction (step 10 of the durability order in `spool`): live messages
//! of a closed, mostly dead segment are copied forward, so the segment can
//! go. A task beside the committer and the janitor.

use std::time::Duration;

use super::{Compaction, Spool};
use crate::envelope::QueueId;

/// How often compaction looks for work.
const ROUND_EVERY: Duration = Duration::from_secs(10);
/// Most bytes copied in one round.
const ROUND_BYTES: u64 = 64 << 20;

impl Spool {
    /// Copies long-lived messages out of mostly-dead segments, every few
    /// seconds until the spool is closed. `busy` says which messages are
    /// being delivered now: they are left where they are this round.
    pub async fn run_compactor(self, busy: impl Fn(QueueId) -> bool) {
        loop {
            monoio::time::sleep(ROUND_EVERY).await;
            if self.inner.borrow().closed {
                return;
            }
            let (dir, family) = self.family();
            let mut budget = ROUND_BYTES;
            for work in self.compaction_work() {
                match work {
                    Compaction::Copy { id, loc, progress } if !busy(id) => {
                        if budget < u64::from(loc.len) {
                            break;
                        }
                        budget -= u64::from(loc.len);
                        match crate::spool::read::read_raw(&dir, family, loc).await {
                            Ok(raw) => {
                                let _ = self.relocate(id, loc, &raw, progress).await;
                            }
                            Err(e) => tracing::error!(%id, error = %e, "cannot read a message to compact"),
                        }
                    }
                    Compaction::Progress(p) if !busy(p.id) => {
                        let _ = self.progress(p).await;
                    }
                    _ => {}
                }
            }
        }
    }
}
