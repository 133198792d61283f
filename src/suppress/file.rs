//! The suppression list on disk: `<spool dir>/suppression.jsonl`, an
//! append-only log of changes (one JSON object per line), read into memory
//! at startup and rewritten there when it has grown well past the list.
//!
//! Changes update memory at once (the next RCPT sees them) and are appended
//! and fdatasync'd by a writer thread in batches; the caller's [`Durable`]
//! resolves after the sync, so the delivery owner records a bounce only once
//! the suppression it caused is on disk. A torn last line (a crash in the
//! middle of a write) is cut off at startup; a line that does not parse is
//! skipped with a warning, never a refusal to start.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::{key, Entry, List, Reason, Store};
use crate::events::log::{Completion, Durable};

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Change {
    Add { address: String, tenant: Option<String>, reason: String, since: u64 },
    Remove { address: String, tenant: Option<String> },
}

impl Change {
    fn line(&self) -> Vec<u8> {
        let mut l = serde_json::to_vec(self).unwrap_or_default();
        l.push(b'\n');
        l
    }
}

/// The file-backed store.
#[derive(Debug)]
pub struct FileStore {
    list: RwLock<List>,
    tx: Mutex<mpsc::Sender<(Vec<u8>, Completion)>>,
}

/// What opening found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entries: usize,
    pub lines: usize,
    /// Lines skipped because they do not parse.
    pub bad_lines: usize,
    /// A torn last line was cut off.
    pub torn: bool,
    pub compacted: bool,
}

impl FileStore {
    /// Opens (or creates) `path`, reads it, and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Arc<FileStore>, Loaded), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut loaded = Loaded::default();
        let mut list = List::default();
        if path.exists() {
            let bytes = std::fs::read(path).map_err(err)?;
            let complete = match memchr::memrchr(b'\n', &bytes) {
                Some(i) => i + 1,
                None => 0,
            };
            if complete < bytes.len() {
                loaded.torn = true;
                tracing::warn!(path = %path.display(), bytes = bytes.len() - complete,
                    "suppression list: cutting off a torn last line");
                let f = OpenOptions::new().write(true).open(path).map_err(err)?;
                f.set_len(complete as u64).map_err(err)?;
                f.sync_all().map_err(err)?;
            }
            for line in BufReader::new(&bytes[..complete]).split(b'\n') {
                let line = line.map_err(err)?;
                if line.is_empty() {
                    continue;
                }
                loaded.lines += 1;
                match serde_json::from_slice::<Change>(&line) {
                    Ok(Change::Add { address, tenant, reason, since }) => {
                        let reason = Reason::parse(&reason).unwrap_or(Reason::Manual);
                        if !list.add(&address, tenant.as_deref(), reason, since) {
                            loaded.bad_lines += 1;
                        }
                    }
                    Ok(Change::Remove { address, tenant }) => {
                        list.remove(&address, tenant.as_deref());
                    }
                    Err(_) => loaded.bad_lines += 1,
                }
            }
            if loaded.bad_lines > 0 {
                tracing::warn!(path = %path.display(), lines = loaded.bad_lines,
                    "suppression list: skipped lines that do not parse");
            }
        }
        loaded.entries = list.len();
        if loaded.lines > 2 * list.len() + 10_000 || loaded.bad_lines > 0 && loaded.lines > list.len() {
            rewrite(path, &list).map_err(err)?;
            loaded.compacted = true;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        if let Some(dir) = path.parent() {
            let _ = crate::spool::recover::sync_dir(dir);
        }
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("ringpost-suppress".into())
            .spawn(move || writer(file, p, rx))
            .map_err(|e| format!("cannot start the suppression writer: {e}"))?;
        Ok((Arc::new(FileStore { list: RwLock::new(list), tx: Mutex::new(tx) }), loaded))
    }

    fn write(&self, change: &Change) -> Durable {
        let (durable, completion) = Durable::pending();
        let sent = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send((change.line(), completion));
        match sent {
            Ok(()) => durable,
            Err(_) => Durable::ready(),
        }
    }
}

/// tmp + fsync + rename + directory fsync: the old file or the new one.
fn rewrite(path: &Path, list: &List) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut w = std::io::BufWriter::new(File::create(&tmp)?);
        for e in list.all() {
            let c = Change::Add { address: e.address, tenant: e.tenant, reason: e.reason, since: e.since };
            w.write_all(&c.line())?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::spool::recover::sync_dir(dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

fn writer(mut file: File, path: PathBuf, rx: mpsc::Receiver<(Vec<u8>, Completion)>) {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.0;
        let mut done = vec![first.1];
        while let Ok((b, c)) = rx.try_recv() {
            bytes.extend_from_slice(&b);
            done.push(c);
            if bytes.len() > 1 << 20 {
                break;
            }
        }
        if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
            tracing::error!(path = %path.display(), error = %e,
                "cannot write the suppression list; changes hold in memory until a restart");
        }
        for d in done {
            d.complete();
        }
    }
}

impl Store for FileStore {
    fn check(&self, address: &str, tenant: Option<&str>) -> Option<Entry> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).check(address, tenant)
    }

    fn add(
        &self,
        address: &str,
        tenant: Option<&str>,
        reason: Reason,
        since: u64,
    ) -> Result<Durable, String> {
        let k = key(address, tenant)
            .ok_or_else(|| format!("{address:?} is not an address (or the tenant is bad)"))?;
        let (tenant_key, address_key) = match k.split_once('\0') {
            Some((t, a)) => (Some(t.to_owned()), a.to_owned()),
            None => (None, k.clone()),
        };
        self.list.write().unwrap_or_else(|p| p.into_inner()).add(address, tenant, reason, since);
        Ok(self.write(&Change::Add {
            address: address_key,
            tenant: tenant_key,
            reason: reason.as_string(),
            since,
        }))
    }

    fn remove(&self, address: &str, tenant: Option<&str>) -> (bool, Durable) {
        let removed = self.list.write().unwrap_or_else(|p| p.into_inner()).remove(address, tenant);
        if !removed {
            return (false, Durable::ready());
        }
        let address = address.trim().trim_start_matches('<').trim_end_matches('>').to_lowercase();
        (true, self.write(&Change::Remove { address, tenant: tenant.map(str::to_owned) }))
    }

    fn list(&self, address: Option<&str>, limit: usize) -> Vec<Entry> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).list(address, limit)
    }

    fn len(&self) -> usize {
        self.list.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly
    use super::*;
    use crate::delivery::classify::Class;
    use std::time::Duration;

    fn wait(d: Durable) {
        assert!(d.wait(Duration::from_secs(5)));
    }

    #[test]
    fn survives_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.jsonl");
        let (s, l) = FileStore::open(&path).unwrap();
        assert_eq!(l, Loaded::default());
        wait(s.add("A@x.test", None, Reason::Bounce(Class::InvalidRecipient), 10).unwrap());
        wait(s.add("b@x.test", Some("acme"), Reason::Unsubscribe, 20).unwrap());
        wait(s.add("c@x.test", None, Reason::Manual, 30).unwrap());
        let (removed, d) = s.remove("C@x.test", None);
        assert!(removed);
        wait(d);
        assert!(s.add("not an address", None, Reason::Manual, 0).is_err());
        drop(s);
        // A crash in the middle of a line, and a line of garbage.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"bogus\"}\n{\"op\":\"add\",\"addr").unwrap();
        drop(f);
        let (s, l) = FileStore::open(&path).unwrap();
        assert!(l.torn);
        assert_eq!((l.entries, l.bad_lines), (2, 1));
        assert_eq!(s.check("a@X.test", None).unwrap().reason, "bounce:InvalidRecipient");
        assert_eq!(s.check("b@x.test", Some("acme")).unwrap().since, 20);
        assert_eq!(s.check("c@x.test", None), None);
        // Appending after the cut starts a clean line.
        wait(s.add("d@x.test", None, Reason::Complaint, 40).unwrap());
        drop(s);
        let (s, l) = FileStore::open(&path).unwrap();
        assert_eq!(l.entries, 3, "{l:?}");
        assert_eq!(s.check("d@x.test", None).unwrap().reason, "complaint");
    }

    #[test]
    fn a_log_much_longer_than_the_list_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.jsonl");
        let (s, _) = FileStore::open(&path).unwrap();
        let mut last = Durable::ready();
        for i in 0..6_000 {
            s.add(&format!("u{i}@x.test"), None, Reason::Manual, i).unwrap();
            last = s.remove(&format!("u{i}@x.test"), None).1;
        }
        wait(s.add("keep@x.test", None, Reason::Manual, 1).unwrap());
        wait(last);
        drop(s);
        let (s, l) = FileStore::open(&path).unwrap();
        assert!(l.compacted && l.entries == 1, "{l:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert!(s.check("keep@x.test", None).is_some());
    }
}
