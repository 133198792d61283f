//! A user's Maildir as a POP3 maildrop: listing, reading, removing, and the
//! exclusive lock RFC 1939 §8 asks for. Blocking `std::fs`: the shell runs
//! these on the blocking pool.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::MessageInfo;

/// Lists `new/` and `cur/` of a Maildir, oldest first. A Maildir that does
/// not exist yet is an empty maildrop.
pub fn load(dir: &Path) -> io::Result<Vec<MessageInfo>> {
    let mut found = Vec::new();
    for sub in ["cur", "new"] {
        let entries = match fs::read_dir(dir.join(sub)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            let size = match named_size(name) {
                Some(size) => size,
                None => match fs::read(entry.path()) {
                    Ok(c) => super::wire_size(&c),
                    // Removed meanwhile (another reader of the Maildir).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            let mtime = match entry.metadata() {
                Ok(m) => m.modified().ok(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            found.push((mtime, MessageInfo { uid: uid(name), size, path: entry.path() }));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.uid.cmp(&b.1.uid)));
    Ok(found.into_iter().map(|(_, m)| m).collect())
}

/// The size with CRLF line ends, if the file's name carries it (`,W=` as
/// Dovecot and our local delivery write it), so listing need not read it.
fn named_size(name: &str) -> Option<u64> {
    let base = name.split(':').next()?;
    base.split(',').find_map(|field| field.strip_prefix("W=")?.parse().ok())
}

/// The UIDL of a Maildir file: its base name (before `:2,flags`), if that is
/// a valid unique-id (RFC 1939 §7: 1-70 characters 0x21-0x7E); otherwise a
/// hash of it.
fn uid(name: &str) -> String {
    let base = name.split(':').next().unwrap_or(name);
    if !base.is_empty() && base.len() <= 70 && base.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        base.to_owned()
    } else {
        format!("h{:08x}{:08x}", crc32c::crc32c(base.as_bytes()), base.len())
    }
}

/// Reads one message file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    fs::read(path)
}

/// Removes the messages deleted in a session, then syncs the directories.
/// Returns how many could not be removed (a file already gone counts as
/// removed).
pub fn remove<'a>(messages: impl Iterator<Item = &'a MessageInfo>) -> usize {
    let mut failed = 0;
    let mut dirs = HashSet::new();
    for m in messages {
        match fs::remove_file(&m.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %m.path.display(), error = %e, "cannot remove a deleted POP3 message");
                failed += 1;
                continue;
            }
        }
        if let Some(parent) = m.path.parent() {
            dirs.insert(parent.to_owned());
        }
    }
    for d in dirs {
        if let Err(e) = fs::File::open(&d).and_then(|f| f.sync_all()) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot sync a Maildir after removals");
        }
    }
    failed
}

fn locks() -> &'static Mutex<HashSet<PathBuf>> {
    static LOCKS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    LOCKS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// One session's exclusive hold on a maildrop (within this server; RFC 1939
/// §8). Released on drop.
#[derive(Debug)]
pub struct Lock {
    dir: PathBuf,
}

impl Lock {
    /// Takes the maildrop, or `None` if another session holds it.
    pub fn acquire(dir: &Path) -> Option<Lock> {
        let mut held = locks().lock().unwrap_or_else(|p| p.into_inner());
        held.insert(dir.to_owned()).then(|| Lock { dir: dir.to_owned() })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        locks().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests
    use super::*;

    #[test]
    fn lists_new_and_cur_with_wire_sizes_and_stable_uids() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("missing")).unwrap().is_empty());
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("new/1.1_0.host"), "Subject: a\n\nbody\n").unwrap();
        fs::write(dir.path().join("cur/2.1_0.host:2,S"), "Subject: b\r\n\r\nx\r\n").unwrap();
        fs::write(dir.path().join("tmp/3.1_0.host"), "partial").unwrap();
        fs::write(dir.path().join("new/.hidden"), "x").unwrap();
        let m = load(dir.path()).unwrap();
        assert_eq!(m.len(), 2);
        let a = m.iter().find(|m| m.uid == "1.1_0.host").unwrap();
        assert_eq!(a.size, "Subject: a\r\n\r\nbody\r\n".len() as u64);
        let b = m.iter().find(|m| m.uid == "2.1_0.host").unwrap();
        assert_eq!(b.size, "Subject: b\r\n\r\nx\r\n".len() as u64);
        assert_eq!(remove(m.iter().filter(|m| m.uid == "1.1_0.host")), 0);
        assert_eq!(load(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn sizes_come_from_the_name_when_it_has_them() {
        assert_eq!(named_size("1.2_3.host,S=10,W=12:2,S"), Some(12));
        assert_eq!(named_size("1.2_3.host,S=10"), None);
        assert_eq!(named_size("1.2_3.host:2,W=5"), None, "flags are not sizes");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("new")).unwrap();
        // The name wins: the file is not read.
        fs::write(dir.path().join("new/1.1_0.host,S=3,W=99"), "abc").unwrap();
        assert_eq!(load(dir.path()).unwrap()[0].size, 99);
    }

    #[test]
    fn odd_names_get_valid_uids() {
        assert_eq!(uid("123.abc:2,S"), "123.abc");
        let long = "x".repeat(100);
        let u = uid(&long);
        assert!(u.len() <= 70 && u.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_ne!(uid("a b"), "a b");
    }

    #[test]
    fn a_maildrop_is_locked_by_one_session_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::acquire(dir.path()).unwrap();
        assert!(Lock::acquire(dir.path()).is_none());
        drop(first);
        assert!(Lock::acquire(dir.path()).is_some());
    }
}
