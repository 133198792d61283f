//! Local delivery into Maildir (`<mail_dir>/<domain>/<local-part>/`), the
//! format Dovecot and Courier read: the file is written in `tmp/`, fsynced,
//! renamed into `new/`, and `new/` is fsynced, so a crash never leaves half a
//! message in `new/`. Blocking `std::fs`: run it on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::spool::recover::create_dir_durable;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a local delivery failed: permanent (bounce) or temporary (retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalError {
    Permanent(&'static str, String),
    Temporary(String),
}

/// A local part that is safe as one path component.
pub fn mailbox_dir(mail_dir: &Path, domain: &str, local: &str) -> Result<PathBuf, LocalError> {
    let bad = || LocalError::Permanent("5.1.3", format!("local part {local:?} cannot name a mailbox"));
    let local = local.to_lowercase();
    if local.is_empty()
        || local.starts_with('.')
        || local.contains(['/', '\0', '\\'])
        || local.starts_with('"')
    {
        return Err(bad());
    }
    let domain = domain.to_lowercase();
    if domain.is_empty() || domain.starts_with('.') || domain.contains(['/', '\0', '\\']) {
        return Err(bad());
    }
    Ok(mail_dir.join(domain).join(local))
}

/// The uid and gid of a system user (`[local] user`).
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    // SAFETY: getpwnam_r writes only into the buffers we pass; the result
    // is read before they are dropped.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut result = std::ptr::null_mut();
        let rc = libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return Err(format!("no such system user {name:?}"));
        }
        if pwd.pw_uid == 0 {
            return Err(format!("{name:?} is root: Maildirs must belong to an unprivileged user"));
        }
        Ok((pwd.pw_uid, pwd.pw_gid))
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique Maildir file name: `<secs>.<pid>_<counter>.<host>`.
fn unique_name(hostname: &str, unix: u64) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let host = hostname.replace(['/', ':'], "_");
    format!("{unix}.{}_{n}.{host}", std::process::id())
}

fn temp(e: io::Error, what: &str, path: &Path) -> LocalError {
    LocalError::Temporary(format!("{what} {}: {e}", path.display()))
}

/// Delivers `body` (CRLF lines, as spooled) to the Maildir of `local@domain`,
/// with `Return-Path` and `Delivered-To` headers first. Returns the file path.
/// With `owner` (`[local] user`: uid, gid), the directories it makes and
/// the file belong to that user.
///
/// `key` (queue id and recipient) names the file, so that delivering the
/// same recipient of the same message again finds the copy a crash left
/// in `new/` before the spool recorded it (same name, same bytes) and
/// writes no second one; a different file of that name (another spool's
/// ids) is left alone and the message gets a name of its own. The `bool`
/// says the copy was found, not written.
#[allow(clippy::too_many_arguments)] // reason: one delivery's facts, each distinct
pub fn deliver(
    mail_dir: &Path,
    hostname: &str,
    domain: &str,
    local: &str,
    return_path: &str,
    body: &[u8],
    unix: u64,
    key: Option<&str>,
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, bool), LocalError> {
    let dir = mailbox_dir(mail_dir, domain, local)?;
    let Some((uid, gid)) = owner else {
        return write_maildir(&dir, hostname, domain, local, return_path, body, unix, key, None);
    };
    // The domain directory is made here (in mail_dir, which the mail user
    // cannot write, so nothing in the path can be a link it planted) and
    // given to the mail user; below it, everything is done with the mail
    // user's file-system identity (setfsuid/setfsgid: this thread only), so
    // a link the user put in its own Maildir cannot make us write as root
    // anywhere else, and what we create is the user's.
    let domain_dir = dir.parent().unwrap_or(mail_dir).to_path_buf();
    match fs::symlink_metadata(&domain_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(LocalError::Temporary(format!("{} is not a directory", domain_dir.display()))),
        Err(_) => {
            create_dir_durable(&domain_dir).map_err(|e| temp(e, "cannot create", &domain_dir))?;
            std::os::unix::fs::chown(&domain_dir, Some(uid), Some(gid))
                .map_err(|e| temp(e, "cannot chown", &domain_dir))?;
        }
    }
    let _as_user = FsIdentity::become_user(uid, gid);
    write_maildir(&dir, hostname, domain, local, return_path, body, unix, key, Some((uid, gid)))
}

/// This thread's file-system identity switched to a user until dropped
/// (Linux setfsuid/setfsgid; no effect on other threads, nor when we are
/// not root, in which case the creation or chown fails as it should).
struct FsIdentity {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl FsIdentity {
    fn become_user(uid: u32, gid: u32) -> FsIdentity {
        // SAFETY: setfsgid/setfsuid only change this thread's credentials
        // for file-system checks; they return the previous values.
        unsafe {
            let gid_before = libc::setfsgid(gid) as libc::gid_t;
            let uid_before = libc::setfsuid(uid) as libc::uid_t;
            FsIdentity { uid: uid_before, gid: gid_before }
        }
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: as above; back to what the thread had.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// Writes the message into the Maildir `dir` (made if missing).
#[allow(clippy::too_many_arguments)] // reason: one delivery's facts, each distinct
fn write_maildir(
    dir: &Path,
    hostname: &str,
    domain: &str,
    local: &str,
    return_path: &str,
    body: &[u8],
    unix: u64,
    key: Option<&str>,
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, bool), LocalError> {
    for sub in ["tmp", "new", "cur"] {
        let p = dir.join(sub);
        // Durable too: a message made durable in new/ must not vanish with
        // a directory a power cut forgot.
        create_dir_durable(&p).map_err(|e| temp(e, "cannot create", &p))?;
    }
    let mut content = Vec::with_capacity(body.len() + 128);
    // The mailbox's own name, as the directory is named.
    let (local, domain) = (local.to_lowercase(), domain.to_lowercase());
    content.extend_from_slice(
        format!("Return-Path: <{return_path}>\nDelivered-To: {local}@{domain}\n").as_bytes(),
    );
    // Maildir files use LF line ends.
    let mut rest = body;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        content.extend_from_slice(&rest[..i]);
        content.push(b'\n');
        rest = &rest[i + 2..];
    }
    content.extend_from_slice(rest);
    // Sizes in the name, as Dovecot writes them: S= on disk, W= with CRLF
    // line ends (what POP3 lists), so readers need not open the file.
    let wire = crate::pop3::wire_size(&content);
    let sizes = format!(",S={},W={wire}", content.len());
    let host = hostname.replace(['/', ':'], "_");
    let mut final_name = None;
    if let Some(key) = key {
        let name = format!("{unix}.R{key}.{host}{sizes}");
        let new = dir.join("new").join(&name);
        match fs::read(&new) {
            // Delivered before a crash; the spool never heard of it.
            Ok(existing) if existing == content => return Ok((new, true)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => final_name = Some(name),
            Err(e) => return Err(temp(e, "cannot read", &new)),
        }
    }
    let name = format!("{}{sizes}", unique_name(hostname, unix));
    let tmp = dir.join("tmp").join(&name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| temp(e, "cannot create", &tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            temp(e, "cannot chown", &tmp)
        })?;
    }
    f.write_all(&content).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        temp(e, "cannot write", &tmp)
    })?;
    drop(f);
    let new = dir.join("new").join(final_name.as_deref().unwrap_or(&name));
    fs::rename(&tmp, &new).map_err(|e| temp(e, "cannot rename into", &new))?;
    File::open(dir.join("new")).and_then(|d| d.sync_all()).map_err(|e| temp(e, "cannot sync", dir))?;
    Ok((new, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_delivery_of_the_same_recipient_finds_the_first() {
        let root = tempfile::tempdir().unwrap();
        let body = b"Subject: once\r\n\r\nbody\r\n";
        let key = Some("00000000AB000001_0");
        let (first, found) =
            deliver(root.path(), "mx.test", "example.test", "al", "s@x.test", body, 7, key, None).unwrap();
        assert!(!found);
        let again =
            deliver(root.path(), "mx.test", "example.test", "al", "s@x.test", body, 7, key, None).unwrap();
        assert_eq!(again, (first.clone(), true));
        let new = root.path().join("example.test/al/new");
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);
        assert!(first.file_name().unwrap().to_str().unwrap().starts_with("7.R00000000AB000001_0.mx.test,S="));
        // Another recipient of the same message is another file.
        deliver(
            root.path(),
            "mx.test",
            "example.test",
            "al",
            "s@x.test",
            body,
            7,
            Some("00000000AB000001_1"),
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 2);
        // The same name with other bytes (another spool's ids): not ours,
        // so the message is written under a name of its own.
        let other = b"Subject: ONCE\r\n\r\nbody\r\n";
        let (third, found) =
            deliver(root.path(), "mx.test", "example.test", "al", "s@x.test", other, 7, key, None).unwrap();
        assert!(!found);
        assert_ne!(third, first);
        assert!(!third.file_name().unwrap().to_str().unwrap().contains(".R00000000AB000001_0."));
        assert_eq!(std::fs::read_dir(&new).unwrap().count(), 3);
        assert_eq!(
            std::fs::read(&first).unwrap(),
            b"Return-Path: <s@x.test>\nDelivered-To: al@example.test\nSubject: once\n\nbody\n"
        );
    }

    #[test]
    fn delivers_into_new_with_lf_lines() {
        let root = tempfile::tempdir().unwrap();
        let body = b"Received: x\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n";
        let (path, _) = deliver(
            root.path(),
            "mx.test",
            "Example.Test",
            "Alice",
            "s@x.test",
            body,
            1_800_000_000,
            None,
            None,
        )
        .unwrap();
        assert!(path.starts_with(root.path().join("example.test/alice/new")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "Return-Path: <s@x.test>\nDelivered-To: alice@example.test\nReceived: x\nSubject: hi\n\nline one\nline two\n");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(&format!(",S={},W={}", text.len(), text.len() + text.lines().count())),
            "{name}"
        );
        assert!(root.path().join("example.test/alice/cur").is_dir());
        assert_eq!(std::fs::read_dir(root.path().join("example.test/alice/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn unsafe_local_parts_are_refused() {
        let root = Path::new("/nonexistent");
        for bad in ["../etc", ".hidden", "a/b", "", "\"quoted\""] {
            assert!(
                matches!(mailbox_dir(root, "example.test", bad), Err(LocalError::Permanent("5.1.3", _))),
                "{bad}"
            );
        }
        assert!(mailbox_dir(root, "../x", "a").is_err());
    }

    #[test]
    fn unwritable_mail_dir_is_temporary() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let r = deliver(&file, "mx.test", "example.test", "bob", "", b"x\r\n", 0, None, None);
        assert!(matches!(r, Err(LocalError::Temporary(_))), "{r:?}");
    }

    /// Needs root (as the server runs when it owns Maildirs for another
    /// user; the test suite runs as root).
    #[test]
    fn a_link_in_a_users_maildir_cannot_make_us_write_as_root() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let (uid, gid) = (65534, 65534);
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = root.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mail = root.path().join("mail");
        // alice's delivery makes the domain directory, owned by the user.
        let (path, _) =
            deliver(&mail, "mx.test", "example.test", "alice", "", b"x\r\n", 0, None, Some((uid, gid)))
                .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid);
        assert_eq!(std::fs::metadata(mail.join("example.test")).unwrap().uid(), uid);
        assert_eq!(std::fs::metadata(mail.join("example.test/alice/new")).unwrap().uid(), uid);
        // The mail user replaces bob's Maildir by a link to a place only root may write.
        std::os::unix::fs::symlink(&secret, mail.join("example.test/bob")).unwrap();
        let r = deliver(&mail, "mx.test", "example.test", "bob", "", b"x\r\n", 0, None, Some((uid, gid)));
        assert!(matches!(r, Err(LocalError::Temporary(_))), "{r:?}");
        assert_eq!(std::fs::read_dir(&secret).unwrap().count(), 0, "nothing written through the link");
        // And the thread is root again afterwards.
        std::fs::write(secret.join("still-root"), "x").unwrap();
    }
}
