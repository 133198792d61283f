//! What SIGHUP can change, held as one snapshot: every listener's session
//! settings (relay policy and users among them), the TLS certificate, the
//! DKIM keys and delivery's settings. A reader takes the snapshot when it starts something
//! (a connection, a delivery attempt) and keeps it for that; a reload builds a
//! whole new snapshot and swaps it in at once, so a session and the delivery
//! of what it accepted never hold two different ideas of, say, which domains
//! are local.

use std::sync::{Arc, RwLock};

use crate::delivery::DeliveryConfig;
use crate::dkim::Signers;
use crate::smtp::session::SessionConfig;

/// One consistent configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Session settings of each listener, by listener index.
    pub sessions: Vec<Arc<SessionConfig>>,
    /// Certificate and key for STARTTLS and implicit TLS, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub delivery: Arc<DeliveryConfig>,
    /// DKIM signers by domain (`[[dkim]]`, keys loaded).
    pub dkim: Arc<Signers>,
    /// `[unsubscribe]`: one-click unsubscribe URLs and their key.
    pub unsubscribe: Option<Arc<crate::feedback::unsubscribe::Unsubscribe>>,
    /// `[[http_token]]`: the injection API's bearer tokens.
    pub http_tokens: Arc<crate::auth::Tokens>,
    /// `[limits] inject_size`: bytes of one injection request body.
    pub inject_size: u64,
}

/// The current snapshot, shared by every thread.
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Snapshot>>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Arc<Live> {
        Arc::new(Live { current: RwLock::new(Arc::new(snapshot)) })
    }

    /// The snapshot in force now.
    pub fn get(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Delivery's settings in force now.
    pub fn delivery(&self) -> Arc<DeliveryConfig> {
        self.get().delivery.clone()
    }

    /// Puts `snapshot` in force for everything that starts from now on.
    pub fn set(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }
}
