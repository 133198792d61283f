//! Picks up what `ringpost sendmail` left in the maildrop
//! (`<spool>/maildrop`): on worker 0, every [`POLL`], the finished files
//! (names not starting with a dot) are read off the worker, turned into
//! messages by `maildrop::pickup`, stored like any of our clients' mail
//! (`store::Batch`: DKIM, the spool's group commit, the queue, events),
//! and only then removed. A crash between the commit and the removal picks
//! the file up again: at least once, as for every message. A file that
//! cannot be used is moved to `maildrop/bad/` (at most [`MAX_BAD`] kept)
//! and logged.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::clock::unix_secs;
use super::ctx::WorkerCtx;
use super::stage::Stage;
use super::store::Batch;
use crate::envelope::{BodyType, Envelope};
use crate::maildrop;

/// How often the maildrop is looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// Files taken in one round.
const BATCH: usize = 256;
/// Unusable files kept in `bad/`; past it the oldest go.
const MAX_BAD: usize = 1000;

/// Creates the maildrop: writable (not listable) by every local user, as
/// Postfix's is by its postdrop group, sticky so one user's files cannot be
/// removed by another.
pub fn prepare(spool: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = spool.join("maildrop");
    crate::spool::recover::create_dir_durable(&dir.join("bad"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1733))?;
    std::fs::set_permissions(dir.join("bad"), std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Runs until the server drains; the round under way finishes first.
pub async fn run(w: Rc<WorkerCtx>, spool: PathBuf, live: std::sync::Arc<super::live::Live>) {
    let dir = spool.join("maildrop");
    loop {
        if w.signal.stage() > Stage::Running {
            return;
        }
        let taken = round(&w, &dir, &live).await;
        if taken < BATCH {
            monoio::select! {
                _ = monoio::time::sleep(POLL) => {}
                _ = w.signal.changed(Stage::Running) => {}
            }
        }
    }
}

/// One look at the maildrop; how many files were taken.
async fn round(w: &WorkerCtx, dir: &Path, live: &super::live::Live) -> usize {
    let d = dir.to_path_buf();
    let names = monoio::spawn_blocking(move || list(&d)).await.unwrap_or_default();
    if names.is_empty() {
        return 0;
    }
    let snapshot = live.get();
    let Some(session) = snapshot.sessions.first().cloned() else { return 0 };
    let max = session.max_message_size + maildrop::MAX_META as u64;
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let n = paths.len();
    let files = monoio::spawn_blocking(move || paths.into_iter().map(|p| read(p, max)).collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    let mut batch = Batch::default();
    let mut bad = Vec::new();
    // Files stored as a copy per recipient (all or none each).
    let mut split = Vec::new();
    let unix = unix_secs();
    for (path, file) in files {
        let (bytes, uid) = match file {
            Ok(f) => f,
            Err(e) => {
                bad.push((path, e));
                continue;
            }
        };
        let id = w.ids.borrow_mut().next(unix);
        let picked = maildrop::decode(&bytes).and_then(|(meta, message)| {
            maildrop::pickup(&meta, message, uid, id, unix, session.hostname.as_str())
        });
        let p = match picked {
            Ok(p) => p,
            Err(e) => {
                bad.push((path, e));
                continue;
            }
        };
        // X-Tenant and X-Campaign are instructions from a local user, as from
        // any of our clients.
        let (mut tenant, mut campaign, mut message) = (None, None, p.message);
        if let Some((t, c, rest)) = crate::mail::take_tenant_fields(&message) {
            (tenant, campaign, message) = (t, c, rest);
        }
        let mut envelope = Envelope {
            id,
            received_at: unix,
            smtputf8: !p.recipients.iter().all(|r| r.address.is_ascii())
                || p.sender.mailbox().is_some_and(|m| !m.is_ascii()),
            reverse_path: p.sender,
            recipients: p.recipients,
            body_type: if message.is_ascii() { BodyType::SevenBit } else { BodyType::EightBitMime },
            ret: p.ret,
            envid: p.envid,
            client_ip: None,
            helo: String::from("maildrop"),
            auth_user: Some(format!("uid {uid}")),
            tenant,
            campaign,
            requiretls: false,
            tls_not_required: crate::mail::tls_not_required(&message),
        };
        // Tenant mail to several recipients: a copy each, as over SMTP.
        if let Some(u) = snapshot.unsubscribe.as_deref().filter(|_| envelope.recipients.len() > 1) {
            let msg = crate::smtp::session::Message { envelope, body: message, ours: true };
            let copies = super::conn::unsubscribe_copies(u, &msg, &mut w.ids.borrow_mut(), unix);
            match copies {
                Some(copies) => {
                    split.push((path, copies));
                    continue;
                }
                None => (envelope, message) = (msg.envelope, msg.body),
            }
        }
        let message = match (&snapshot.unsubscribe, envelope.recipients.as_slice()) {
            (Some(u), [one]) => {
                let r = crate::feedback::token::Ref {
                    id: id.to_string(),
                    recipient: Some(one.address.to_string()),
                    tenant: envelope.tenant.clone(),
                    campaign: envelope.campaign.clone(),
                };
                crate::feedback::unsubscribe::add_headers(u, &message, &r).unwrap_or(message)
            }
            _ => message,
        };
        tracing::info!(id = %id, uid, from = %envelope.reverse_path, rcpts = envelope.recipients.len(), "picked up from the maildrop");
        batch.push(path, envelope, message);
    }
    let mut done = Vec::new();
    for (path, copies) in split {
        match super::conn::store_copies(w, &snapshot.dkim, copies, crate::rt::clock::instant()).await {
            Ok(()) => done.push(path),
            Err(e) => {
                tracing::warn!(file = %path.display(), why = ?e, "maildrop file left for the next round")
            }
        }
    }
    batch
        .spool(
            &snapshot.dkim,
            w,
            |path, why| tracing::warn!(file = %path.display(), why, "maildrop file left for the next round"),
        )
        .await;
    batch
        .settle(w, |path, r| match r {
            Ok(()) => done.push(path),
            Err(why) => tracing::warn!(file = %path.display(), why, "maildrop file left for the next round"),
        })
        .await;
    let bad_dir = dir.join("bad");
    let _ = monoio::spawn_blocking(move || {
        for path in done {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(file = %path.display(), error = %e, "cannot remove a picked-up maildrop file: it will be sent again");
            }
        }
        for (path, why) in bad {
            tracing::error!(file = %path.display(), why, "unusable maildrop file set aside in maildrop/bad");
            set_aside(&path, &bad_dir);
        }
    })
    .await;
    n
}

/// The finished files, oldest first (names start with the time), at most [`BATCH`].
fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort_unstable();
    names.truncate(BATCH);
    names
}

/// A file's bytes and its owner's uid; Err if it is not a plain file of
/// its own (a symbolic link, or a hard link to another file: the maildrop
/// is writable by every local user, and the server may read what they
/// cannot) or too big to be a message.
fn read(path: PathBuf, max: u64) -> (PathBuf, Result<(Vec<u8>, u32), String>) {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let r = (|| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| e.to_string())?;
        let meta = f.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err("not a plain file with a single link".into());
        }
        if meta.len() > max {
            return Err(format!("{} bytes: over [limits] message_size", meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.take(max + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        Ok((bytes, meta.uid()))
    })();
    (path, r)
}

/// Moves an unusable file to `bad/`, keeping at most [`MAX_BAD`] there.
fn set_aside(path: &Path, bad: &Path) {
    if let Ok(entries) = std::fs::read_dir(bad) {
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        if names.len() >= MAX_BAD {
            names.sort();
            for old in &names[..names.len() + 1 - MAX_BAD] {
                let _ = std::fs::remove_file(old);
            }
        }
    }
    if let Some(name) = path.file_name() {
        if std::fs::rename(path, bad.join(name)).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}
