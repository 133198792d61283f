//! Startup: lock the spool, scan every segment, drop torn tails, rebuild the
//! index, hand families to workers. Runs before any worker starts, so it uses
//! blocking `std::fs`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::index::{Index, Location};
use super::record::{self, Header, Kind, HEADER_LEN};
use super::segment::{self, FILE_HEADER_LEN};
use super::SpoolError;
use crate::envelope::QueueId;

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
    pub torn: Vec<(PathBuf, u64, u64)>,
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
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
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

/// Fsyncs a directory, so entries created or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// Scans all families under `dir`.
pub fn scan(dir: &Path) -> Result<Recovery, SpoolError> {
    let mut report = Report::default();
    let mut families = Vec::new();
    let mut max_id = QueueId(0);
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let Some(family) = entry.file_name().to_str().and_then(segment::parse_family) else { continue };
        families.push(scan_family(dir, family, &mut report, &mut max_id)?);
    }
    families.sort_by_key(|f| f.family);
    report.messages = families.iter().map(|f| f.index.len()).sum();
    report.recipients = families.iter().map(|f| f.index.recipients()).sum();
    Ok(Recovery { families, max_id, report })
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
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut index = Index::default();
    for &seq in &seqs {
        scan_segment(dir, family, seq, &mut index, report, max_id)?;
        report.segments += 1;
    }
    Ok(Family { family, index, max_seq: seqs.last().copied().unwrap_or(0) })
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
    let mut file = File::open(&path).map_err(|e| io_err(&path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(&path, e))?.len();
    index.add_segment(seq);
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    if file_len < FILE_HEADER_LEN {
        // Crashed while creating it: nothing was ever acknowledged from it.
        report.torn.push((path, 0, file_len));
        return Ok(());
    }
    file.read_exact(&mut header).map_err(|e| io_err(&path, e))?;
    match segment::decode_header(&header) {
        Some(h) if h.family == family && h.seq == seq => {
            if !h.recyclable {
                index.forbid_recycling(seq);
            }
        }
        Some(h) if h.family == family && h.seq < seq => {
            // A dead segment renamed for reuse before its new header was
            // written: what it holds was spent. It is deleted as dead.
            tracing::info!(path = %path.display(), was = h.seq, "segment file was being recycled; it holds nothing");
            return Ok(());
        }
        _ => return Err(SpoolError::Corrupt { path, reason: "bad segment header".into() }),
    }
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut pos = FILE_HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let rest = file_len - pos;
        if rest == 0 {
            break;
        }
        match read_record(&mut reader, rest, seq, &mut payload) {
            Ok(h) => {
                let len = HEADER_LEN as u64 + u64::from(h.len);
                let loc = Location { seq, offset: pos, len: len as u32 };
                apply(h.kind, &payload, loc, index, report, max_id, &path);
                pos += len;
            }
            Err(Stop::End) => break,
            Err(Stop::Bad) => {
                report.torn.push((path.clone(), pos, rest));
                break;
            }
        }
    }
    index.note_extent(seq, pos);
    Ok(())
}

/// Why a segment's records stop.
enum Stop {
    /// The end mark every commit leaves after its batch (or a hole): what
    /// follows, if anything, is left from the file's earlier life.
    End,
    /// Anything else: the tail from here on is torn.
    Bad,
}

/// Reads one record of segment `seq`.
fn read_record(r: &mut impl Read, rest: u64, seq: u64, payload: &mut Vec<u8>) -> Result<Header, Stop> {
    let mut hb = [0u8; HEADER_LEN];
    if rest < HEADER_LEN as u64 || r.read_exact(&mut hb).is_err() {
        return Err(Stop::Bad);
    }
    if hb == [0; HEADER_LEN] {
        return Err(Stop::End);
    }
    let h = Header::parse(&hb).map_err(|_| Stop::Bad)?;
    if u64::from(h.len) > rest - HEADER_LEN as u64 {
        return Err(Stop::Bad);
    }
    payload.clear();
    payload.resize(h.len as usize, 0);
    r.read_exact(payload).map_err(|_| Stop::Bad)?;
    h.verify(&hb, payload, seq).map_err(|_| Stop::Bad)?;
    Ok(h)
}

#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename these
fn apply(
    kind: Kind,
    payload: &[u8],
    loc: Location,
    index: &mut Index,
    report: &mut Report,
    max_id: &mut QueueId,
    path: &Path,
) {
    match kind {
        Kind::Message => match record::decode_message(payload) {
            Ok((env, _)) => {
                *max_id = (*max_id).max(env.id);
                index.insert(&env, loc);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), offset = loc.offset, error = %e, "skipping undecodable message record");
                report.bad_records += 1;
            }
        },
        Kind::Progress => match record::decode_progress(payload) {
            Ok(p) => {
                index.apply_progress(&p, loc.seq);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), offset = loc.offset, error = %e, "skipping undecodable progress record");
                report.bad_records += 1;
            }
        },
        Kind::Done => match record::decode_done(payload) {
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
        out.write_all(&segment::encode_header(target.family, seq)).map_err(|e| io_err(&path, e))?;
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
            h.verify(&buf, &buf[HEADER_LEN..], loc.seq).map_err(corrupt)?;
            let (env, _) = record::decode_message(&buf[HEADER_LEN..]).map_err(corrupt)?;
            // Re-tag the record for the segment it moves to.
            record::unseal(&mut buf, &h, loc.seq);
            record::seal(&mut buf, seq);
            out.write_all(&buf).map_err(|e| io_err(&path, e))?;
            target.index.insert(&env, Location { seq, offset: pos, len: loc.len });
            pos += u64::from(loc.len);
            // Carry the delivery progress along, so done recipients stay done.
            if let Some(p) = old.index.get(env.id).and_then(|e| e.progress.as_ref()) {
                let rec = record::ProgressRecord {
                    id: env.id,
                    attempts: p.attempts,
                    next_attempt: p.next_attempt,
                    last_error: p.last_error.clone(),
                    done: p.done.clone(),
                };
                let mut pbuf = Vec::new();
                pos += record::append_progress(&mut pbuf, &rec) as u64;
                record::seal(&mut pbuf, seq);
                out.write_all(&pbuf).map_err(|e| io_err(&path, e))?;
                target.index.apply_progress(&rec, seq);
            }
        }
        out.sync_all().map_err(|e| io_err(&path, e))?;
        sync_dir(&segment::family_dir(dir, target.family))?;
    }
    let odir = segment::family_dir(dir, old.family);
    fs::remove_dir_all(&odir).map_err(|e| io_err(&odir, e))?;
    sync_dir(dir)?;
    Ok(live.len())
}
