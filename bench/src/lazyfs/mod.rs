//! `ringpost-bench lazyfs`: a FUSE passthrough over a backing directory that
//! keeps what was written but not synced in memory, and loses it on command:
//! a power cut for the spool's durability order (the idea of LazyFS). The
//! model is in [`disk`]; this file maps FUSE requests onto it and serves a
//! control socket:
//!
//! - `cut drop`: the power goes; everything unsynced is lost;
//! - `cut partial`: the power goes; a random part of what was unsynced
//!   reached the disk (pages inside each file's synced size, a prefix of
//!   the namespace journal);
//! - `stats`: what is unsynced now;
//! - `exit`: unmount and exit.
//!
//! After a cut every request fails with EIO until the filesystem is
//! unmounted (kill the programs using it first); mounting again on the same
//! backing directory is the machine coming back.

mod disk;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use disk::{CutMode, Disk};

/// Attributes are never cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;

#[derive(clap::Args)]
pub struct Args {
    /// The directory that holds what survives a cut.
    #[arg(long)]
    pub backing: PathBuf,
    /// Where to mount the filesystem.
    #[arg(long)]
    pub mount: PathBuf,
    /// A Unix socket for commands (`cut drop`, `cut partial`, `stats`, `exit`).
    #[arg(long)]
    pub control: PathBuf,
    /// Seed for the random choices of `cut partial` (printed when not given).
    #[arg(long)]
    pub seed: Option<u64>,
}

struct State {
    disk: Disk,
    /// FUSE inode number to path relative to the backing directory.
    paths: std::collections::HashMap<u64, PathBuf>,
    /// Open handles: handle to inode.
    handles: std::collections::HashMap<u64, u64>,
    next_fh: u64,
    rng: fastrand::Rng,
}

struct LazyFs {
    root: PathBuf,
    root_ino: u64,
    state: Arc<Mutex<State>>,
}

/// A panic while holding the lock leaves the model as it was at the panic;
/// carrying on is as good as anything for a test tool.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc_eio()))
}

const fn libc_eio() -> i32 {
    5
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
}

fn kind(m: &fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

impl LazyFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn ino(&self, m: &fs::Metadata) -> u64 {
        if m.ino() == self.root_ino {
            1
        } else {
            m.ino()
        }
    }

    fn attr(&self, st: &State, m: &fs::Metadata) -> io::Result<FileAttr> {
        let ino = self.ino(m);
        let size = match st.disk.size(ino)? {
            Some(s) => s,
            None => m.len(),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn path(st: &State, ino: INodeNo) -> Result<PathBuf, Errno> {
        st.disk.is_dead().then_some(()).map_or(Ok(()), |()| Err(Errno::EIO))?;
        st.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(st: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(Self::path(st, parent)?.join(name))
    }

    /// Looks a path up and remembers its inode.
    fn entry(&self, st: &mut State, rel: &Path) -> Result<FileAttr, Errno> {
        let m = fs::symlink_metadata(st.disk.abs(rel)).map_err(|e| errno(&e))?;
        let attr = self.attr(st, &m).map_err(|e| errno(&e))?;
        st.paths.insert(attr.ino.0, rel.to_path_buf());
        Ok(attr)
    }

    fn stat(&self, st: &State, ino: INodeNo) -> Result<FileAttr, Errno> {
        let rel = Self::path(st, ino)?;
        let m = fs::symlink_metadata(st.disk.abs(&rel)).map_err(|e| errno(&e))?;
        self.attr(st, &m).map_err(|e| errno(&e))
    }

    fn open_handle(st: &mut State, ino: u64) -> FileHandle {
        st.next_fh += 1;
        st.handles.insert(st.next_fh, ino);
        FileHandle(st.next_fh)
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.lock();
        match Self::child(&st, parent, name).and_then(|rel| self.entry(&mut st, &rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        match self.stat(&st, ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let res = (|| {
            let rel = Self::path(&st, ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(st.disk.abs(&rel), fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| errno(&e))?;
            }
            if let Some(size) = size {
                st.disk.truncate(ino.0, &rel, size).map_err(|e| errno(&e))?;
            }
            self.stat(&st, ino)
        })();
        match res {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let res = Self::child(&st, parent, name).and_then(|rel| {
            st.disk.mkdir(&rel).map_err(|e| errno(&e))?;
            self.entry(&mut st, &rel)
        });
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        match Self::child(&st, parent, name).and_then(|rel| st.disk.unlink(&rel).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        match Self::child(&st, parent, name).and_then(|rel| st.disk.rmdir(&rel).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE/EXCHANGE: the spool uses neither.
            reply.error(Errno::EINVAL);
            return;
        }
        let mut st = self.lock();
        let res = (|| {
            let from = Self::child(&st, parent, name)?;
            let to = Self::child(&st, newparent, newname)?;
            st.disk.rename(&from, &to).map_err(|e| errno(&e))?;
            // Paths under a renamed directory move with it.
            for p in st.paths.values_mut() {
                if let Ok(rest) = p.strip_prefix(&from) {
                    *p = to.join(rest);
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let res = (|| {
            let rel = Self::path(&st, ino)?;
            if flags.0 & libc::O_TRUNC != 0 {
                st.disk.truncate(ino.0, &rel, 0).map_err(|e| errno(&e))?;
            }
            Ok(Self::open_handle(&mut st, ino.0))
        })();
        match res {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        let res = (|| {
            let rel = Self::child(&st, parent, name)?;
            let created = st.disk.create(&rel, flags & libc::O_EXCL != 0).map_err(|e| errno(&e))?;
            if created {
                let _ = fs::set_permissions(st.disk.abs(&rel), fs::Permissions::from_mode(mode & 0o7777));
            }
            let attr = self.entry(&mut st, &rel)?;
            if !created && flags & libc::O_TRUNC != 0 {
                st.disk.truncate(attr.ino.0, &rel, 0).map_err(|e| errno(&e))?;
            }
            let attr = self.stat(&st, attr.ino)?;
            Ok((attr, Self::open_handle(&mut st, attr.ino.0)))
        })();
        match res {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut st = self.lock();
        match Self::path(&st, ino)
            .and_then(|rel| st.disk.read(ino.0, &rel, offset, size).map_err(|e| errno(&e)))
        {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        match Self::path(&st, ino)
            .and_then(|rel| st.disk.write(ino.0, &rel, offset, data).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) syncs nothing.
        if self.lock().disk.is_dead() {
            reply.error(Errno::EIO);
        } else {
            reply.ok();
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        if let Some(ino) = st.handles.remove(&fh.0) {
            if !st.handles.values().any(|&i| i == ino) {
                st.disk.closed(ino);
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.lock();
        match st.disk.sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let st = self.lock();
        match Self::path(&st, ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut st = self.lock();
        let res = (|| {
            let rel = Self::path(&st, ino)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> =
                vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
            for e in fs::read_dir(st.disk.abs(&rel)).map_err(|e| errno(&e))? {
                let e = e.map_err(|e| errno(&e))?;
                let m = e.metadata().map_err(|e| errno(&e))?;
                let child = self.ino(&m);
                st.paths.insert(child, rel.join(e.file_name()));
                entries.push((child, kind(&m), e.file_name()));
            }
            Ok(entries)
        })();
        match res {
            Ok(entries) => {
                for (i, (child, k, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, k, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.lock();
        match Self::path(&st, ino).and_then(|rel| st.disk.sync_dir(&rel).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix_statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                255,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn nix_statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `out` points to writable memory
    // of the right size; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `out`.
    Ok(unsafe { out.assume_init() })
}

/// Mounts, serves the control socket until `exit`, unmounts.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let root =
        fs::canonicalize(&args.backing).with_context(|| format!("backing {}", args.backing.display()))?;
    let mut stash = root.clone().into_os_string();
    stash.push(".lazyfs-stash");
    let stash = PathBuf::from(stash);
    // Stashes of a previous run are what a cut already decided about.
    let _ = fs::remove_dir_all(&stash);
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("lazyfs: backing {}, mount {}, seed {seed}", root.display(), args.mount.display());
    let root_ino = fs::metadata(&root)?.ino();
    let mut paths = std::collections::HashMap::new();
    paths.insert(1, PathBuf::new());
    let fs_ = LazyFs {
        root: root.clone(),
        root_ino,
        state: Arc::new(Mutex::new(State {
            disk: Disk::new(root, stash)?,
            paths,
            handles: std::collections::HashMap::new(),
            next_fh: 0,
            rng: fastrand::Rng::with_seed(seed),
        })),
    };
    let state = fs_.state.clone();
    let _ = fs::remove_file(&args.control);
    let listener =
        UnixListener::bind(&args.control).with_context(|| format!("control {}", args.control.display()))?;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("lazyfs".into()), MountOption::DefaultPermissions];
    config.n_threads = Some(1);
    let session = fuser::spawn_mount(fs_, &args.mount, &config)
        .with_context(|| format!("mount {}", args.mount.display()))?;
    eprintln!("lazyfs: mounted");
    for conn in listener.incoming() {
        let conn = conn?;
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["cut", mode] => {
                let mode = match *mode {
                    "drop" => Some(CutMode::Drop),
                    "partial" => Some(CutMode::Partial),
                    _ => None,
                };
                match mode {
                    None => "error: cut drop|partial".to_string(),
                    Some(mode) => {
                        let mut st = lock(&state);
                        let State { disk, rng, .. } = &mut *st;
                        let mut rng2 = rng.clone();
                        let report = match mode {
                            CutMode::Drop => disk.cut(&mut || false, &mut |_| 0),
                            CutMode::Partial => disk.cut(&mut || rng.bool(), &mut |n| rng2.usize(..=n)),
                        };
                        format!("{report:?}")
                    }
                }
            }
            ["stats"] => {
                let st = lock(&state);
                format!("dead={} open_handles={}; {}", st.disk.is_dead(), st.handles.len(), st.disk.pending())
            }
            ["exit"] => {
                let mut w = &conn;
                let _ = writeln!(w, "bye");
                break;
            }
            _ => format!("error: unknown command {line:?}"),
        };
        eprintln!("lazyfs: {} -> {answer}", line.trim());
        let mut w = &conn;
        let _ = writeln!(w, "{answer}");
    }
    drop(session);
    Ok(())
}
