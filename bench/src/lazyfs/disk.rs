//! The disk model behind `lazyfs`: a backing directory holds what a power
//! cut would keep; what was written but not synced lives beside it and is
//! lost (all of it, or a random part, as a disk's writeback would leave it)
//! when the power goes.
//!
//! - File data: writes go to 4 KiB pages in memory (per inode); `fsync` and
//!   `fdatasync` write them to the backing file. A truncation is pending too
//!   (`floor`: backing bytes at or past it read as zeros until the sync).
//! - Names: create, mkdir, unlink, rmdir and rename happen in the backing
//!   directory at once, but each is logged with what undoes it (an unlinked or
//!   replaced file is moved to a stash, not deleted). An operation is durable
//!   once a directory it touches is fsynced (POSIX's rule: fsync of the
//!   file alone does not make its name durable), together with every earlier
//!   operation on the same names (a journal commits in order).
//! - A cut undoes, newest first, every operation that is not durable (or
//!   all but a random prefix of them: a journal commits in order) and drops
//!   unsynced pages (or writes a random subset of those inside the synced
//!   size: writeback goes in no particular order, but a file's size only
//!   grows with a journal commit).
//!
//! Nothing here knows FUSE: `super` maps requests onto these calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const PAGE: u64 = 4096;

/// One file's unsynced state.
#[derive(Debug)]
struct Inode {
    /// The backing file, read-write.
    file: File,
    /// Pages written since the last sync (whole pages: the untouched part
    /// of a page is filled from what the file held).
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// The size the file has for its users, if it differs from the
    /// backing file's.
    size: Option<u64>,
    /// Backing bytes at or past this offset read as zeros (a truncation
    /// not yet synced); `u64::MAX` when none.
    floor: u64,
}

impl Inode {
    fn backing_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn len(&self) -> io::Result<u64> {
        match self.size {
            Some(s) => Ok(s),
            None => self.backing_len(),
        }
    }

    /// A page as the file's users see it.
    fn page(&self, index: u64) -> io::Result<Box<[u8]>> {
        if let Some(p) = self.dirty.get(&index) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        let backing = self.backing_len()?.min(self.floor);
        if start < backing {
            let n = (backing - start).min(PAGE) as usize;
            self.file.read_exact_at(&mut buf[..n], start)?;
        }
        Ok(buf)
    }

    fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.size.is_none() && self.floor == u64::MAX
    }

    /// Writes everything unsynced to the backing file.
    fn sync(&mut self) -> io::Result<()> {
        let len = self.len()?;
        if self.floor < self.backing_len()? {
            self.file.set_len(self.floor)?;
        }
        for (&index, page) in &self.dirty {
            let start = index * PAGE;
            if start >= len {
                continue;
            }
            let n = (len - start).min(PAGE) as usize;
            self.file.write_all_at(&page[..n], start)?;
        }
        if self.backing_len()? != len {
            self.file.set_len(len)?;
        }
        self.dirty.clear();
        self.size = None;
        self.floor = u64::MAX;
        Ok(())
    }
}

/// A namespace operation and what undoes it.
#[derive(Debug)]
enum Op {
    Create {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    /// The file now lives at `stash`.
    Unlink {
        path: PathBuf,
        stash: PathBuf,
    },
    Rmdir {
        path: PathBuf,
    },
    /// `replaced`: where the file that `to` named before now lives.
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

impl Op {
    /// The names (relative paths) the operation makes, removes or moves.
    fn own(&self) -> Vec<&Path> {
        match self {
            Op::Create { path } | Op::Mkdir { path } | Op::Unlink { path, .. } | Op::Rmdir { path } => {
                vec![path]
            }
            Op::Rename { from, to, .. } => vec![from, to],
        }
    }

    /// What it needs to have happened first: its own names and their
    /// directories (an earlier operation on any of them is committed with
    /// it).
    fn needs(&self) -> Vec<&Path> {
        let mut v = self.own();
        v.extend(self.own().into_iter().filter_map(Path::parent));
        v
    }

    /// Directories whose fsync makes the operation durable.
    fn dirs(&self) -> Vec<&Path> {
        fn parent(p: &Path) -> &Path {
            p.parent().unwrap_or(Path::new(""))
        }
        match self {
            Op::Create { path } | Op::Mkdir { path } | Op::Unlink { path, .. } | Op::Rmdir { path } => {
                vec![parent(path)]
            }
            // The new name is the one that must survive.
            Op::Rename { to, .. } => vec![parent(to)],
        }
    }
}

#[derive(Debug)]
struct Logged {
    op: Op,
    durable: bool,
}

/// What a cut did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    pub pages_dropped: u64,
    pub pages_kept: u64,
    pub ops_undone: u64,
    pub ops_kept: u64,
    pub undo_errors: u64,
}

/// How much of what was not synced a cut keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing.
    Drop,
    /// A random subset of pages (inside each file's synced size) and a
    /// random prefix of the namespace operations.
    Partial,
}

#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    stash: PathBuf,
    inodes: HashMap<u64, Inode>,
    log: Vec<Logged>,
    stashed: u64,
    dead: bool,
}

fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc_eio())
}

const fn libc_eio() -> i32 {
    5 // EIO
}

impl Disk {
    /// `stash` must be on the same filesystem as `root` (files are renamed
    /// into it) and outside it.
    pub fn new(root: PathBuf, stash: PathBuf) -> io::Result<Disk> {
        fs::create_dir_all(&stash)?;
        Ok(Disk { root, stash, inodes: HashMap::new(), log: Vec::new(), stashed: 0, dead: false })
    }

    /// What is not durable now: files with unsynced data (inode and
    /// pages) and namespace operations, for `stats`.
    pub fn pending(&self) -> String {
        let files: Vec<String> = self
            .inodes
            .iter()
            .filter(|(_, i)| !i.is_clean())
            .map(|(n, i)| format!("{n}:{}", i.dirty.len()))
            .collect();
        let ops: Vec<String> =
            self.log.iter().filter(|e| !e.durable).map(|e| format!("{:?}", e.op)).collect();
        format!(
            "dirty files (inode:pages) [{}]; pending name operations [{}]",
            files.join(" "),
            ops.join(", ")
        )
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    fn check(&self) -> io::Result<()> {
        if self.dead {
            return Err(dead());
        }
        Ok(())
    }

    pub fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn inode(&mut self, ino: u64, rel: &Path) -> io::Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let file = OpenOptions::new().read(true).write(true).open(self.root.join(rel))?;
            self.inodes.insert(ino, Inode { file, dirty: BTreeMap::new(), size: None, floor: u64::MAX });
        }
        Ok(self.inodes.get_mut(&ino).expect("inserted above"))
    }

    /// The size users see, if this model knows better than the backing file.
    pub fn size(&self, ino: u64) -> io::Result<Option<u64>> {
        match self.inodes.get(&ino) {
            Some(i) if !i.is_clean() => i.len().map(Some),
            _ => Ok(None),
        }
    }

    pub fn write(&mut self, ino: u64, rel: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let inode = self.inode(ino, rel)?;
        let len = inode.len()?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(data.len() - done);
            let mut page = inode.page(index)?;
            page[within..within + n].copy_from_slice(&data[done..done + n]);
            inode.dirty.insert(index, page);
            done += n;
        }
        let end = offset + data.len() as u64;
        if end > len || inode.size.is_some() {
            inode.size = Some(end.max(len));
        }
        Ok(())
    }

    pub fn read(&mut self, ino: u64, rel: &Path, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.check()?;
        let inode = self.inode(ino, rel)?;
        let len = inode.len()?;
        if offset >= len {
            return Ok(Vec::new());
        }
        let end = (offset + u64::from(size)).min(len);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = ((PAGE as usize) - within).min((end - at) as usize);
            out.extend_from_slice(&inode.page(index)?[within..within + n]);
            at += n as u64;
        }
        Ok(out)
    }

    pub fn truncate(&mut self, ino: u64, rel: &Path, size: u64) -> io::Result<()> {
        self.check()?;
        let inode = self.inode(ino, rel)?;
        let len = inode.len()?;
        if size < len {
            // The page holding the new end keeps its head only.
            let index = size / PAGE;
            let within = (size % PAGE) as usize;
            if within != 0 {
                let mut page = inode.page(index)?;
                page[within..].fill(0);
                inode.dirty.insert(index, page);
            }
            let first_gone = size.div_ceil(PAGE);
            inode.dirty.retain(|&i, _| i < first_gone);
            inode.floor = inode.floor.min(size);
        }
        inode.size = Some(size);
        Ok(())
    }

    /// fsync/fdatasync of a file.
    pub fn sync_file(&mut self, ino: u64) -> io::Result<()> {
        self.check()?;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.sync()?;
        }
        Ok(())
    }

    /// The file was closed by everyone: forget it unless it holds unsynced
    /// data (the page cache keeps that after close).
    pub fn closed(&mut self, ino: u64) {
        if self.inodes.get(&ino).is_some_and(Inode::is_clean) {
            self.inodes.remove(&ino);
        }
    }

    /// fsync of a directory: operations on its entries become durable, with
    /// every earlier operation on the names they touch.
    pub fn sync_dir(&mut self, rel: &Path) -> io::Result<()> {
        self.check()?;
        let mut names: HashSet<PathBuf> = HashSet::new();
        for entry in self.log.iter_mut().rev() {
            let direct = entry.op.dirs().contains(&rel);
            let linked = entry.op.own().iter().any(|n| names.contains(*n));
            if direct || linked {
                entry.durable = true;
                names.extend(entry.op.needs().into_iter().map(Path::to_path_buf));
            }
        }
        self.settle()
    }

    /// Deletes the stashes of durable operations and drops the durable
    /// prefix of the log.
    fn settle(&mut self) -> io::Result<()> {
        for entry in &self.log {
            if !entry.durable {
                continue;
            }
            let stash = match &entry.op {
                Op::Unlink { stash, .. } => Some(stash),
                Op::Rename { replaced: Some(r), .. } => Some(r),
                _ => None,
            };
            if let Some(s) = stash {
                match fs::remove_file(s) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let keep = self.log.iter().position(|e| !e.durable).unwrap_or(self.log.len());
        self.log.drain(..keep);
        Ok(())
    }

    fn next_stash(&mut self) -> PathBuf {
        self.stashed += 1;
        self.stash.join(self.stashed.to_string())
    }

    /// Creates an empty file (or opens an existing one; `truncate` like
    /// O_TRUNC). Returns whether it was created.
    pub fn create(&mut self, rel: &Path, exclusive: bool) -> io::Result<bool> {
        self.check()?;
        let abs = self.root.join(rel);
        match OpenOptions::new().write(true).create_new(true).open(&abs) {
            Ok(_) => {
                self.log.push(Logged { op: Op::Create { path: rel.to_path_buf() }, durable: false });
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !exclusive => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        self.check()?;
        fs::create_dir(self.root.join(rel))?;
        self.log.push(Logged { op: Op::Mkdir { path: rel.to_path_buf() }, durable: false });
        Ok(())
    }

    pub fn unlink(&mut self, rel: &Path) -> io::Result<()> {
        self.check()?;
        let abs = self.root.join(rel);
        if fs::symlink_metadata(&abs)?.is_dir() {
            return Err(io::Error::from_raw_os_error(21)); // EISDIR
        }
        let stash = self.next_stash();
        fs::rename(&abs, &stash)?;
        self.log.push(Logged { op: Op::Unlink { path: rel.to_path_buf(), stash }, durable: false });
        Ok(())
    }

    pub fn rmdir(&mut self, rel: &Path) -> io::Result<()> {
        self.check()?;
        fs::remove_dir(self.root.join(rel))?;
        self.log.push(Logged { op: Op::Rmdir { path: rel.to_path_buf() }, durable: false });
        Ok(())
    }

    pub fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        let (afrom, ato) = (self.root.join(from), self.root.join(to));
        fs::symlink_metadata(&afrom)?;
        let replaced = match fs::symlink_metadata(&ato) {
            Ok(m) if m.is_dir() => {
                // Renaming over a directory (empty, by rename's rules) is
                // not something the spool does; refuse it plainly.
                return Err(io::Error::from_raw_os_error(21)); // EISDIR
            }
            Ok(_) => {
                let s = self.next_stash();
                fs::rename(&ato, &s)?;
                Some(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Err(e) = fs::rename(&afrom, &ato) {
            if let Some(s) = &replaced {
                let _ = fs::rename(s, &ato);
            }
            return Err(e);
        }
        self.log.push(Logged {
            op: Op::Rename { from: from.to_path_buf(), to: to.to_path_buf(), replaced },
            durable: false,
        });
        Ok(())
    }

    /// The power goes: from now on every call fails with EIO. `coin` is
    /// asked once per unsynced page inside a file's synced size (true:
    /// the page reached the disk) and `prefix` picks how many of the
    /// non-durable namespace operations reached the journal (`Drop` mode
    /// passes a coin that always says false and a prefix of 0).
    pub fn cut(
        &mut self,
        coin: &mut dyn FnMut() -> bool,
        prefix: &mut dyn FnMut(usize) -> usize,
    ) -> CutReport {
        self.dead = true;
        let mut report = CutReport::default();
        for inode in self.inodes.values_mut() {
            let synced = inode.backing_len().unwrap_or(0);
            for (&index, page) in &inode.dirty {
                let start = index * PAGE;
                if start < synced && coin() {
                    let n = (synced - start).min(PAGE) as usize;
                    if inode.file.write_all_at(&page[..n], start).is_ok() {
                        report.pages_kept += 1;
                        continue;
                    }
                }
                report.pages_dropped += 1;
            }
        }
        self.inodes.clear();
        let pending: Vec<usize> = (0..self.log.len()).filter(|&i| !self.log[i].durable).collect();
        let keep = prefix(pending.len()).min(pending.len());
        for &i in &pending[..keep] {
            self.log[i].durable = true;
        }
        report.ops_kept = keep as u64;
        for entry in self.log.iter().rev() {
            if entry.durable {
                continue;
            }
            report.ops_undone += 1;
            if self.undo(&entry.op).is_err() {
                report.undo_errors += 1;
            }
        }
        // The stashes of what was kept are garbage now.
        for entry in &mut self.log {
            entry.durable = true;
        }
        let undone: Vec<Logged> = std::mem::take(&mut self.log);
        for entry in undone {
            let stash = match entry.op {
                Op::Unlink { stash, .. } => Some(stash),
                Op::Rename { replaced: Some(r), .. } => Some(r),
                _ => None,
            };
            if let Some(s) = stash {
                let _ = fs::remove_file(s);
            }
        }
        report
    }

    fn undo(&self, op: &Op) -> io::Result<()> {
        let abs = |p: &Path| self.root.join(p);
        match op {
            Op::Create { path } => fs::remove_file(abs(path)),
            Op::Mkdir { path } => fs::remove_dir_all(abs(path)),
            Op::Unlink { path, stash } => fs::rename(stash, abs(path)),
            Op::Rmdir { path } => fs::create_dir(abs(path)),
            Op::Rename { from, to, replaced } => {
                fs::rename(abs(to), abs(from))?;
                if let Some(r) = replaced {
                    fs::rename(r, abs(to))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn disk() -> (tempfile::TempDir, Disk) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("root")).unwrap();
        let d = Disk::new(t.path().join("root"), t.path().join("stash")).unwrap();
        (t, d)
    }

    fn ino(d: &Disk, rel: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(d.abs(Path::new(rel))).unwrap().ino()
    }

    fn on_disk(d: &Disk, rel: &str) -> Option<Vec<u8>> {
        fs::read(d.abs(Path::new(rel))).ok()
    }

    /// `f`, created and its name made durable, empty: (path, inode).
    fn durable_empty_file(d: &mut Disk) -> (&'static Path, u64) {
        let f = Path::new("f");
        d.create(f, true).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        (f, ino(d, "f"))
    }

    fn drop_all(d: &mut Disk) -> CutReport {
        d.cut(&mut || false, &mut |_| 0)
    }

    #[test]
    fn synced_data_survives_and_the_rest_is_lost() {
        let (_t, mut d) = disk();
        let (f, i) = durable_empty_file(&mut d);
        d.write(i, f, 0, b"hello").unwrap();
        assert_eq!(d.read(i, f, 0, 100).unwrap(), b"hello");
        assert_eq!(d.size(i).unwrap(), Some(5));
        assert_eq!(on_disk(&d, "f").unwrap(), b"");
        d.sync_file(i).unwrap();
        assert_eq!(on_disk(&d, "f").unwrap(), b"hello");
        d.write(i, f, 3, b"p me, world").unwrap();
        assert_eq!(d.read(i, f, 0, 100).unwrap(), b"help me, world");
        let r = drop_all(&mut d);
        assert_eq!(r.pages_dropped, 1);
        assert_eq!(on_disk(&d, "f").unwrap(), b"hello");
        assert!(d.write(i, f, 0, b"x").is_err(), "dead after the cut");
    }

    #[test]
    fn a_name_needs_its_directory_synced() {
        let (_t, mut d) = disk();
        d.mkdir(Path::new("w")).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        for name in ["w/a", "w/b"] {
            let p = Path::new(name);
            d.create(p, true).unwrap();
            let i = ino(&d, name);
            d.write(i, p, 0, b"data").unwrap();
            d.sync_file(i).unwrap();
        }
        // Only w/a's directory entry is made durable (the sync comes
        // before w/b is created).
        let (_t2, mut d2) = disk();
        d2.mkdir(Path::new("w")).unwrap();
        d2.sync_dir(Path::new("")).unwrap();
        d2.create(Path::new("w/a"), true).unwrap();
        d2.sync_dir(Path::new("w")).unwrap();
        d2.create(Path::new("w/b"), true).unwrap();
        drop_all(&mut d2);
        assert!(on_disk(&d2, "w/a").is_some());
        assert!(on_disk(&d2, "w/b").is_none());
        // Without any directory sync both are gone, synced data or not.
        drop_all(&mut d);
        assert!(on_disk(&d, "w/a").is_none());
        assert!(on_disk(&d, "w/b").is_none());
        assert!(on_disk(&d, "w").is_none() || fs::read_dir(d.abs(Path::new("w"))).unwrap().count() == 0);
    }

    #[test]
    fn unlink_and_rename_come_back_unless_synced() {
        let (_t, mut d) = disk();
        for (name, body) in [("old", b"old!"), ("tmp", b"new!")] {
            let p = Path::new(name);
            d.create(p, true).unwrap();
            let i = ino(&d, name);
            d.write(i, p, 0, body).unwrap();
            d.sync_file(i).unwrap();
        }
        d.create(Path::new("gone"), true).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        d.rename(Path::new("tmp"), Path::new("old")).unwrap();
        d.unlink(Path::new("gone")).unwrap();
        assert_eq!(on_disk(&d, "old").unwrap(), b"new!");
        assert!(on_disk(&d, "gone").is_none());
        let r = drop_all(&mut d);
        assert_eq!((r.ops_undone, r.undo_errors), (2, 0));
        assert_eq!(on_disk(&d, "old").unwrap(), b"old!");
        assert_eq!(on_disk(&d, "tmp").unwrap(), b"new!");
        assert!(on_disk(&d, "gone").is_some());

        let (_t, mut d) = disk();
        d.create(Path::new("a"), true).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        d.rename(Path::new("a"), Path::new("b")).unwrap();
        d.sync_dir(Path::new("")).unwrap();
        drop_all(&mut d);
        assert!(on_disk(&d, "a").is_none());
        assert!(on_disk(&d, "b").is_some());
    }

    #[test]
    fn truncation_is_pending_until_synced() {
        let (_t, mut d) = disk();
        let (f, i) = durable_empty_file(&mut d);
        let big: Vec<u8> = (0..10_000u32).map(|n| n as u8).collect();
        d.write(i, f, 0, &big).unwrap();
        d.sync_file(i).unwrap();
        d.truncate(i, f, 5000).unwrap();
        d.write(i, f, 9000, b"end").unwrap();
        let seen = d.read(i, f, 0, 20_000).unwrap();
        assert_eq!(seen.len(), 9003);
        assert_eq!(&seen[..5000], &big[..5000]);
        assert!(seen[5000..9000].iter().all(|&b| b == 0), "truncated bytes read as zeros");
        assert_eq!(&seen[9000..], b"end");
        d.sync_file(i).unwrap();
        assert_eq!(on_disk(&d, "f").unwrap(), seen);

        d.truncate(i, f, 10).unwrap();
        drop_all(&mut d);
        assert_eq!(on_disk(&d, "f").unwrap(), seen, "an unsynced truncation is lost");
    }

    #[test]
    fn a_partial_cut_keeps_some_pages_inside_the_synced_size_only() {
        let (_t, mut d) = disk();
        let (f, i) = durable_empty_file(&mut d);
        d.write(i, f, 0, &vec![1u8; 3 * PAGE as usize]).unwrap();
        d.sync_file(i).unwrap();
        d.write(i, f, 0, &vec![2u8; 5 * PAGE as usize]).unwrap();
        let mut n = 0;
        let r = d.cut(
            &mut || {
                n += 1;
                n != 2
            },
            &mut |_| 0,
        );
        assert_eq!((r.pages_kept, r.pages_dropped), (2, 3));
        let after = on_disk(&d, "f").unwrap();
        assert_eq!(after.len(), 3 * PAGE as usize, "the size does not grow without a sync");
        assert!(after[..PAGE as usize].iter().all(|&b| b == 2));
        assert!(after[PAGE as usize..2 * PAGE as usize].iter().all(|&b| b == 1));
        assert!(after[2 * PAGE as usize..].iter().all(|&b| b == 2));
    }

    #[test]
    fn a_partial_cut_keeps_a_prefix_of_the_journal() {
        let (_t, mut d) = disk();
        for name in ["a", "b", "c"] {
            d.create(Path::new(name), true).unwrap();
        }
        let r = d.cut(&mut || false, &mut |n| {
            assert_eq!(n, 3);
            2
        });
        assert_eq!((r.ops_kept, r.ops_undone), (2, 1));
        assert!(on_disk(&d, "a").is_some());
        assert!(on_disk(&d, "b").is_some());
        assert!(on_disk(&d, "c").is_none());
    }

    #[test]
    fn syncing_a_directory_keeps_earlier_operations_on_the_same_names() {
        let (_t, mut d) = disk();
        d.mkdir(Path::new("w")).unwrap();
        d.create(Path::new("w/x"), true).unwrap();
        // Only w is synced, not the root: w's creation is kept anyway,
        // since w/x cannot exist without it.
        d.sync_dir(Path::new("w")).unwrap();
        let r = drop_all(&mut d);
        assert_eq!(r.undo_errors, 0);
        assert!(on_disk(&d, "w/x").is_some());
    }
}
