//! Startup: lock the spool, scan every segment, drop torn tails, rebuild the
//! index, hand families to workers. Runs before any worker starts, so it uses
//! blocking `std::fs`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::index::{Index, Location};
use super::record::{self, Header, RecordKind, Version, HEADER_LEN};
use super::segment::{self, Format, FILE_HEADER_LEN};
use super::SpoolError;
use crate::envelope::QueueId;

#[cfg(test)]
mod tests;

/// The recovered state of one family (one worker's segment files).
#[derive(Debug)]
pub struct Family {
    pub family: u32,
    pub index: Index,
    /// Highest segment number seen; new segments start above it.
    pub max_seq: u64,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Report {
    pub segments: usize,
    pub messages: usize,
    pub recipients: u64,
    /// Segment files whose tail was torn: (path, valid length, bytes dropped).
    /// A torn tail held only a batch that was never acknowledged.
    pub torn: Vec<(PathBuf, u64, u64)>,
    /// Damaged bytes among committed records, skipped: (path, offset, bytes).
    pub corrupt: Vec<(PathBuf, u64, u64)>,
    /// CRC-valid records that did not decode (skipped).
    pub bad_records: usize,
    pub deleted_segments: usize,
    pub adopted_messages: usize,
}

/// The whole recovered spool.
#[derive(Debug)]
pub struct Recovery {
    pub families: Vec<Family>,
    /// The highest queue id seen (new ids must be above it).
    pub max_id: QueueId,
    pub report: Report,
}

/// Holds the spool's lock file open (and so the lock) while alive.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

fn io_err(path: &Path, e: io::Error) -> SpoolError {
    SpoolError::Io { path: path.to_path_buf(), source: e }
}

/// Creates the spool directory if needed and takes its exclusive lock.
pub fn lock(dir: &Path) -> Result<SpoolLock, SpoolError> {
    create_dir_durable(dir).map_err(|e| io_err(dir, e))?;
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(SpoolError::Locked(dir.to_path_buf()));
    }
    Ok(SpoolLock { _file: file })
}

/// Creates `dir` and whatever parents it lacks, each made durable: POSIX
/// puts a new directory's name on disk only once the directory holding it
/// is fsynced (a power cut may otherwise take the directory, and every file
/// later made durable inside it, away).
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_dir_durable(p)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(parent.unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
}

/// Replaces the file at `path` with `bytes` so that a crash or power cut
/// leaves the old content or the new, never a mix and never an older one:
/// written to `<path>.tmp`, fsynced, renamed over `path`, the directory
/// fsynced (the rename is durable only then).
pub fn replace_file_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?.sync_all()
}

/// Fsyncs a directory, so entries created or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// Scans all families under `dir`, several at once (one thread per CPU):
/// families are independent (a message and the records about it are in
/// one family), and checking records is CPU work, so a spool left by
/// several workers is read back about as many times faster.
pub fn scan(dir: &Path) -> Result<Recovery, SpoolError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(family) = entry.file_name().to_str().and_then(segment::parse_family) {
            numbers.push(family);
        }
    }
    numbers.sort_unstable();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(numbers.len());
    let scanned = scan_families(dir, &numbers, threads);
    let mut report = Report::default();
    let mut families = Vec::new();
    let mut max_id = QueueId(0);
    for one in scanned {
        let (family, r, id) = one?;
        report.absorb(r);
        max_id = max_id.max(id);
        families.push(family);
    }
    report.messages = families.iter().map(|f| f.index.len()).sum();
    report.recipients = families.iter().map(|f| f.index.recipients()).sum();
    Ok(Recovery { families, max_id, report })
}

/// One family's scan: its state, its part of the report, its highest id.
type Scanned = Result<(Family, Report, QueueId), SpoolError>;

/// Scans `numbers` on up to `threads` threads (each takes the next family
/// not yet taken); results in the order of `numbers`.
fn scan_families(dir: &Path, numbers: &[u32], threads: usize) -> Vec<Scanned> {
    let one = |family: u32| -> Scanned {
        let mut report = Report::default();
        let mut max_id = QueueId(0);
        let fam = scan_family(dir, family, &mut report, &mut max_id)?;
        Ok((fam, report, max_id))
    };
    if threads <= 1 {
        return numbers.iter().map(|&f| one(f)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Scanned)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&family) = numbers.get(i) else { return out };
                        out.push((i, one(family)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

impl Report {
    /// Adds what another scan found (counts summed, lists appended).
    fn absorb(&mut self, other: Report) {
        self.segments += other.segments;
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.torn.extend(other.torn);
        self.corrupt.extend(other.corrupt);
        self.bad_records += other.bad_records;
        self.deleted_segments += other.deleted_segments;
        self.adopted_messages += other.adopted_messages;
    }
}

fn scan_family(
    dir: &Path,
    family: u32,
    report: &mut Report,
    max_id: &mut QueueId,
) -> Result<Family, SpoolError> {
    let fdir = segment::family_dir(dir, family);
    let mut seqs = Vec::new();
    for entry in fs::read_dir(&fdir).map_err(|e| io_err(&fdir, e))? {
        let entry = entry.map_err(|e| io_err(&fdir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(segment::parse_segment_name) {
            if seq > segment::MAX_SEQ {
                // Not a number ringpost gives: new segments count up from the
                // highest, and this one would make them wrap.
                let reason =
                    format!("segment number {seq:#x} is out of range (at most {:#x})", segment::MAX_SEQ);
                return Err(SpoolError::Corrupt { path: entry.path(), reason });
            }
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut index = Index::default();
    for (k, &seq) in seqs.iter().enumerate() {
        // While this segment is checked (CPU), the kernel reads the next
        // one from the disk: the two overlap instead of adding up.
        if let Some(&next) = seqs.get(k + 1) {
            read_ahead(&segment::segment_path(dir, family, next));
        }
        scan_segment(dir, family, seq, &mut index, report, max_id)?;
        report.segments += 1;
    }
    Ok(Family { family, index, max_seq: seqs.last().copied().unwrap_or(0) })
}

/// Asks the kernel to start reading `path` into the page cache (a hint:
/// failures do not matter, the scan reads it anyway).
fn read_ahead(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = File::open(path) {
        // SAFETY: a valid open descriptor; the call only hints the page cache.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
        }
    }
}

fn scan_segment(
    dir: &Path,
    family: u32,
    seq: u64,
    index: &mut Index,
    report: &mut Report,
    max_id: &mut QueueId,
) -> Result<(), SpoolError> {
    let path = segment::segment_path(dir, family, seq);
    let file = File::open(&path).map_err(|e| io_err(&path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(&path, e))?.len();
    index.add_segment(seq);
    if file_len < FILE_HEADER_LEN {
        // Crashed while creating it: nothing was ever acknowledged from it.
        report.torn.push((path, 0, file_len));
        return Ok(());
    }
    let mut w = Window::new(file, file_len);
    let header =
        w.get(0, FILE_HEADER_LEN as usize).map_err(|e| io_err(&path, e))?.and_then(segment::decode_header);
    let header = match header {
        Some(h) if h.family == family && h.seq == seq => h,
        Some(h) if h.family == family && h.seq < seq => {
            // A dead segment renamed for reuse before its new header was
            // written: what it holds was spent. It is deleted as dead.
            tracing::info!(path = %path.display(), was = h.seq, "segment file was being recycled; it holds nothing");
            return Ok(());
        }
        _ => return Err(SpoolError::Corrupt { path, reason: "bad segment header".into() }),
    };
    if !header.recyclable() {
        index.forbid_recycling(seq);
    }
    let mut seg = Scan { window: w, seq, tag: header.tag(), format: header.format, path };
    let end = seg.records(index, report, max_id).map_err(|e| io_err(&seg.path, e))?;
    index.note_extent(seq, end);
    Ok(())
}

/// What sits at an offset of a segment.
enum Found {
    /// A whole record of this segment (its header; the payload is checked).
    Record(Header),
    /// The end mark of the last commit: nothing after it belongs to this
    /// segment.
    End,
    /// Neither.
    Bad,
}

/// One segment being scanned.
struct Scan {
    window: Window,
    seq: u64,
    tag: u32,
    format: Format,
    path: PathBuf,
}

impl Scan {
    /// Applies every record of the segment to the index; returns where its
    /// records end.
    ///
    /// A torn batch (one whose fdatasync never finished, so nothing in it
    /// was acknowledged) can only sit at the end of what was written. Any
    /// other damage is corruption of committed records: it costs the damaged
    /// bytes alone (logged and counted), and the scan goes on from the next
    /// good record, found by searching forward if the damage left no length
    /// to skip by. What tells them apart is what follows: a torn tail has no
    /// good record and no end mark of this segment after it.
    fn records(&mut self, index: &mut Index, report: &mut Report, max_id: &mut QueueId) -> io::Result<u64> {
        let mut pos = FILE_HEADER_LEN;
        while pos < self.window.len {
            match self.at(pos)? {
                Found::Record(h) => {
                    let len = HEADER_LEN as u64 + u64::from(h.len);
                    let loc = Location { seq: self.seq, offset: pos, len: len as u32, tag: self.tag };
                    if let Some(payload) = self.window.get(pos + HEADER_LEN as u64, h.len as usize)? {
                        apply(h.kind, payload, loc, index, report, max_id, &self.path);
                    }
                    pos += len;
                }
                Found::End => return Ok(pos),
                Found::Bad => match self.next_good(pos)? {
                    Some(next) => {
                        report.corrupt.push((self.path.clone(), pos, next - pos));
                        pos = next;
                    }
                    None => {
                        report.torn.push((self.path.clone(), pos, self.window.len - pos));
                        return Ok(pos);
                    }
                },
            }
        }
        Ok(pos)
    }

    /// What is at `pos`.
    fn at(&mut self, pos: u64) -> io::Result<Found> {
        let Some(hb) = self.window.get(pos, HEADER_LEN)? else { return Ok(Found::Bad) };
        let end = match self.format {
            Format::V3 { .. } => record::is_end_mark(hb, self.tag, pos),
            // Older segments end with 16 zero bytes.
            Format::V1 | Format::V2 => hb == [0; HEADER_LEN],
        };
        if end {
            return Ok(Found::End);
        }
        let version = match self.format {
            Format::V1 => Version::V1,
            Format::V2 => Version::V2,
            Format::V3 { .. } => Version::V3,
        };
        let h = match Header::parse(hb) {
            Ok(h) if h.version == version && h.fits(self.tag) => h,
            _ => return Ok(Found::Bad),
        };
        match self.window.get(pos + HEADER_LEN as u64, h.len as usize)? {
            Some(payload) if h.verify(payload, self.tag).is_ok() => Ok(Found::Record(h)),
            _ => Ok(Found::Bad),
        }
    }

    /// The offset of the next good record or end mark after the bad bytes
    /// at `pos`, if any.
    fn next_good(&mut self, pos: u64) -> io::Result<Option<u64>> {
        if let Format::V3 { .. } = self.format {
            return self.search(pos + 1);
        }
        // Older segments: their zero end marks look like zeroed damage, and
        // their tags are known to anyone, so they are never searched. A bad
        // record whose header still gives its length is skipped by it when a
        // good record follows; anything else ends the segment, as before.
        let Some(hb) = self.window.get(pos, HEADER_LEN)? else { return Ok(None) };
        let Ok(h) = Header::parse(hb) else { return Ok(None) };
        let next = pos + HEADER_LEN as u64 + u64::from(h.len);
        Ok(match self.at(next)? {
            Found::Record(_) => Some(next),
            Found::End | Found::Bad => None,
        })
    }

    /// Searches forward from `from` for a good record or end mark of this
    /// segment. Candidates start with the record or end-mark magic; almost
    /// every false one fails the header check on its 16 bytes, so the search
    /// costs about one pass over the bytes whatever they hold.
    fn search(&mut self, mut from: u64) -> io::Result<Option<u64>> {
        let finder = memchr::memmem::Finder::new(b"RP");
        loop {
            let hay = self.window.from(from, 4)?;
            if hay.len() < 4 {
                return Ok(None);
            }
            let candidate = finder.find_iter(hay).find(|&i| {
                i + 4 > hay.len() || hay[i..i + 4] == record::MAGIC || hay[i..i + 4] == record::END_MAGIC
            });
            match candidate {
                // A magic cut by the end of the window: look again from it.
                Some(i) if i + 4 > hay.len() => from += i as u64,
                Some(i) => {
                    let at = from + i as u64;
                    if !matches!(self.at(at)?, Found::Bad) {
                        return Ok(Some(at));
                    }
                    from = at + 1;
                }
                None => from += (hay.len() - 1) as u64,
            }
        }
    }
}

/// Reads a file through a window: sequential scans read it once, in big
/// pieces; a record bigger than the window gets a window of its size.
struct Window {
    file: File,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

/// The usual window size.
const WINDOW: usize = 1 << 20;

impl Window {
    fn new(file: File, len: u64) -> Window {
        Window { file, len, start: 0, buf: Vec::new() }
    }

    /// The `n` bytes at `off`, or `None` if the file ends before them.
    fn get(&mut self, off: u64, n: usize) -> io::Result<Option<&[u8]>> {
        if off.checked_add(n as u64).is_none_or(|end| end > self.len) {
            return Ok(None);
        }
        if off < self.start || off + n as u64 > self.start + self.buf.len() as u64 {
            self.load(off, n)?;
        }
        let at = (off - self.start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// The bytes from `off` that the window holds: at least `min` of them
    /// unless the file ends sooner (then all that is left).
    fn from(&mut self, off: u64, min: usize) -> io::Result<&[u8]> {
        let end = self.start + self.buf.len() as u64;
        if !(off >= self.start && off <= end && end - off >= min as u64) {
            self.load(off, min)?;
        }
        let at = ((off - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[at..])
    }

    fn load(&mut self, off: u64, n: usize) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let want = n.max(WINDOW) as u64;
        let len = want.min(self.len.saturating_sub(off)) as usize;
        self.buf.resize(len, 0);
        self.file.read_exact_at(&mut self.buf, off)?;
        self.start = off;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename these
fn apply(
    kind: RecordKind,
    payload: &[u8],
    loc: Location,
    index: &mut Index,
    report: &mut Report,
    max_id: &mut QueueId,
    path: &Path,
) {
    match kind {
        RecordKind::Message => match record::decode_message(payload) {
            Ok((env, _)) => {
                *max_id = (*max_id).max(env.id);
                index.insert(&env, loc);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), offset = loc.offset, error = %e, "skipping undecodable message record");
                report.bad_records += 1;
            }
        },
        RecordKind::Progress => match record::decode_progress(payload) {
            Ok(p) => {
                index.apply_progress(&p, loc.seq);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), offset = loc.offset, error = %e, "skipping undecodable progress record");
                report.bad_records += 1;
            }
        },
        RecordKind::Done => match record::decode_done(payload) {
            Ok(id) => {
                index.remove_at(id, loc.seq);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), offset = loc.offset, error = %e, "skipping undecodable done record");
                report.bad_records += 1;
            }
        },
    }
}

/// Deletes every segment of `fam` that holds nothing live (see [`Index`]),
/// keeping the directory synced between rounds.
pub fn delete_dead_segments(dir: &Path, fam: &mut Family, report: &mut Report) -> Result<(), SpoolError> {
    loop {
        let dead = fam.index.deletable(None);
        if dead.is_empty() {
            return Ok(());
        }
        for seq in dead {
            let path = segment::segment_path(dir, fam.family, seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            fam.index.mark_deleted(seq);
            report.deleted_segments += 1;
        }
        sync_dir(&segment::family_dir(dir, fam.family))?;
    }
}

/// Gives each of `workers` workers its family. Families numbered `workers` or
/// above (left by a run with more threads) are adopted: their live messages are
/// copied into the family `f % workers`, synced, and only then deleted.
pub fn assign(dir: &Path, mut rec: Recovery, workers: u32) -> Result<(Vec<Family>, Report), SpoolError> {
    let mut own: Vec<Family> =
        (0..workers).map(|f| Family { family: f, index: Index::default(), max_seq: 0 }).collect();
    let mut foreign = Vec::new();
    for fam in rec.families.drain(..) {
        if fam.family < workers {
            let slot = fam.family as usize;
            own[slot] = fam;
        } else {
            foreign.push(fam);
        }
    }
    for fam in &mut own {
        let fdir = segment::family_dir(dir, fam.family);
        if !fdir.exists() {
            fs::create_dir_all(&fdir).map_err(|e| io_err(&fdir, e))?;
            sync_dir(dir)?;
        }
    }
    for old in foreign {
        let target = &mut own[(old.family % workers) as usize];
        rec.report.adopted_messages += adopt(dir, old, target)?;
    }
    for fam in &mut own {
        delete_dead_segments(dir, fam, &mut rec.report)?;
    }
    Ok((own, rec.report))
}

fn adopt(dir: &Path, old: Family, target: &mut Family) -> Result<usize, SpoolError> {
    let mut live: Vec<(QueueId, Location)> =
        old.index.ids().filter_map(|id| Some((id, old.index.get(id)?.loc))).collect();
    live.sort_by_key(|(_, l)| (l.seq, l.offset));
    if !live.is_empty() {
        target.max_seq += 1;
        let seq = target.max_seq;
        let path = segment::segment_path(dir, target.family, seq);
        let mut out =
            fs::OpenOptions::new().create_new(true).write(true).open(&path).map_err(|e| io_err(&path, e))?;
        let salt = super::new_salt().map_err(|e| io_err(&path, e))?;
        let tag = record::segment_tag(seq, salt);
        out.write_all(&segment::encode_header(target.family, seq, salt)).map_err(|e| io_err(&path, e))?;
        target.index.add_segment(seq);
        let mut pos = FILE_HEADER_LEN;
        let mut buf = Vec::new();
        for (_, loc) in &live {
            let src = segment::segment_path(dir, old.family, loc.seq);
            let mut f = File::open(&src).map_err(|e| io_err(&src, e))?;
            f.seek(SeekFrom::Start(loc.offset)).map_err(|e| io_err(&src, e))?;
            buf.resize(loc.len as usize, 0);
            f.read_exact(&mut buf).map_err(|e| io_err(&src, e))?;
            let corrupt =
                |e: record::DecodeError| SpoolError::Corrupt { path: src.clone(), reason: e.to_string() };
            let h = Header::parse(&buf).map_err(corrupt)?;
            h.verify(&buf[HEADER_LEN..], loc.tag).map_err(corrupt)?;
            let (env, _) = record::decode_message(&buf[HEADER_LEN..]).map_err(corrupt)?;
            // Re-tag the record for the segment it moves to.
            record::unseal(&mut buf, &h, loc.tag);
            record::seal(&mut buf, tag);
            out.write_all(&buf).map_err(|e| io_err(&path, e))?;
            target.index.insert(&env, Location { seq, offset: pos, len: loc.len, tag });
            pos += u64::from(loc.len);
            // Carry the delivery progress along, so done recipients stay done.
            if let Some(p) = old.index.get(env.id).and_then(|e| e.progress.as_ref()) {
                let rec = p.record(env.id);
                let mut pbuf = Vec::new();
                pos += record::append_progress(&mut pbuf, &rec) as u64;
                record::seal(&mut pbuf, tag);
                out.write_all(&pbuf).map_err(|e| io_err(&path, e))?;
                target.index.apply_progress(&rec, seq);
            }
        }
        out.write_all(&record::end_mark(tag, pos)).map_err(|e| io_err(&path, e))?;
        out.sync_all().map_err(|e| io_err(&path, e))?;
        sync_dir(&segment::family_dir(dir, target.family))?;
    }
    let odir = segment::family_dir(dir, old.family);
    fs::remove_dir_all(&odir).map_err(|e| io_err(&odir, e))?;
    sync_dir(dir)?;
    Ok(live.len())
}
