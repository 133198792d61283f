//! Recovery of segments written by the real writer, then damaged, torn or
//! hand-made in older formats.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::spool::record::tests::sample_envelope;
use crate::spool::{segment, Spool};

const SEGMENT: u64 = 64 << 10;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build().unwrap().block_on(f)
}

fn open(dir: &Path) -> Spool {
    let rec = scan(dir).unwrap();
    let (mut fams, _) = assign(dir, rec, 1).unwrap();
    Spool::new(dir.to_path_buf(), fams.remove(0), true, SEGMENT, Arc::default())
}

/// Messages `first..first + n`, each committed alone (so only the last
/// commit's end mark is left); returns where each landed.
fn write_messages(dir: &Path, first: u64, n: u64, body: &[u8]) -> Vec<Location> {
    write_bodies(dir, first, &vec![body; n as usize])
}

/// One message per body, ids from `first`, each committed alone.
fn write_bodies(dir: &Path, first: u64, bodies: &[&[u8]]) -> Vec<Location> {
    let spool = open(dir);
    block_on(async {
        let committer = monoio::spawn(spool.clone().run_committer());
        let mut locs = Vec::new();
        for (id, body) in (first..).zip(bodies) {
            locs.push(spool.append_message(&sample_envelope(id), b"", body).await.unwrap().unwrap().loc);
        }
        spool.close();
        committer.await;
        locs
    })
}

fn live_ids(dir: &Path) -> (BTreeSet<u64>, Report) {
    let rec = scan(dir).unwrap();
    let ids = rec.families.iter().flat_map(|f| f.index.ids().map(|id| id.0)).collect();
    (ids, rec.report)
}

/// Changes the bytes of segment `seq` of family 0.
fn patch(dir: &Path, seq: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let path = segment::segment_path(dir, 0, seq);
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

fn ids(range: std::ops::RangeInclusive<u64>, except: &[u64]) -> BTreeSet<u64> {
    range.filter(|i| !except.contains(i)).collect()
}

/// Ten committed messages; record `n` (1-based) is damaged by `damage`:
/// only that record is lost, reported as corrupt at its offset, and
/// nothing is called torn.
fn one_damaged_record(n: usize, damage: impl FnOnce(&mut [u8])) {
    let dir = tempfile::tempdir().unwrap();
    let locs = write_messages(dir.path(), 1, 10, b"Subject: s\r\n\r\nbody\r\n");
    let loc = locs[n - 1];
    assert!(locs.iter().all(|l| l.seq == loc.seq), "one segment");
    patch(dir.path(), loc.seq, |b| {
        damage(&mut b[loc.offset as usize..(loc.offset + u64::from(loc.len)) as usize])
    });
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, ids(1..=10, &[n as u64]), "only record {n} is lost");
    assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
    let (_, at, bytes) = &report.corrupt[0];
    assert_eq!((*at, *bytes), (loc.offset, u64::from(loc.len)), "the damage is located exactly");
    assert!(report.torn.is_empty(), "{:?}", report.torn);
}

#[test]
fn a_flipped_bit_costs_one_record() {
    one_damaged_record(4, |r| r[HEADER_LEN + 20] ^= 0x08);
}

#[test]
fn a_zeroed_header_costs_one_record() {
    one_damaged_record(3, |r| r[..HEADER_LEN].fill(0));
}

#[test]
fn an_absurd_length_costs_one_record() {
    one_damaged_record(5, |r| r[8..12].copy_from_slice(&0x3fff_fff0u32.to_le_bytes()));
}

#[test]
fn damage_to_the_last_record_is_not_a_torn_tail() {
    // The end mark after it says it was committed.
    one_damaged_record(10, |r| r[r.len() - 1] ^= 1);
}

/// Garbage over the end of one record and the start of the next: framing
/// is lost, and the scan finds its way back on the record after them.
#[test]
fn framing_lost_resynchronises_on_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let locs = write_messages(dir.path(), 1, 10, &[b'b'; 300]);
    let (l3, l4) = (locs[2], locs[3]);
    let from = (l3.offset + 100) as usize;
    let to = (l4.offset + 50) as usize;
    let mut rng = fastrand::Rng::with_seed(3);
    patch(dir.path(), l3.seq, |b| b[from..to].iter_mut().for_each(|x| *x = rng.u8(..)));
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, ids(1..=10, &[3, 4]));
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].1, l3.offset);
    assert_eq!(report.corrupt[0].2, locs[4].offset - l3.offset);
    assert!(report.torn.is_empty());
}

/// A batch cut short by a crash (its fdatasync never finished, so nothing
/// in it was acknowledged) is a torn tail, not corruption: the committed
/// records before it all come back.
#[test]
fn a_torn_batch_is_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let locs = write_messages(dir.path(), 1, 5, b"body\r\n");
    let last = locs[4];
    let end = last.offset + u64::from(last.len);
    let tag = last.tag;
    patch(dir.path(), last.seq, |b| {
        // The torn batch overwrites the end mark: one whole record, then
        // half of the next, then whatever the file held (zeros here).
        b.truncate(end as usize);
        let mut batch = Vec::new();
        record::append_message(&mut batch, &sample_envelope(6), b"", b"whole\r\n");
        record::append_message(&mut batch, &sample_envelope(7), b"", &[b'x'; 500]);
        record::seal(&mut batch, tag);
        batch.truncate(batch.len() - 300);
        b.extend_from_slice(&batch);
        b.extend_from_slice(&[0; 4096]);
    });
    let (found, report) = live_ids(dir.path());
    // Record 6 was written whole: recovering it means at worst a duplicate.
    assert_eq!(found, ids(1..=6, &[]));
    assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
    assert_eq!(report.torn.len(), 1);
}

/// A message body can hold bytes shaped like a record, sealed with any tag
/// a client could work out. When damage makes recovery search through that
/// body, it must not take them for a record.
#[test]
fn a_record_forged_in_a_body_is_never_taken() {
    let dir = tempfile::tempdir().unwrap();
    let seq = 1; // the first segment of a new spool
    let mut body = b"Subject: innocent\r\n\r\n".to_vec();
    for tag in [0, record::seq_tag(seq), record::segment_tag(seq, 0)] {
        let mut forged = Vec::new();
        record::append_message(&mut forged, &sample_envelope(666), b"", b"forged\r\n");
        record::append_done(&mut forged, QueueId(2));
        record::seal(&mut forged, tag);
        body.extend_from_slice(&forged);
    }
    let locs = write_bodies(dir.path(), 1, &[b"first\r\n", &body, b"third\r\n"]);
    // The second message's header is damaged: the search runs through its body.
    let l2 = locs[1];
    assert_eq!(l2.seq, locs[2].seq);
    patch(dir.path(), l2.seq, |b| b[l2.offset as usize + 4] = 0xee);
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, BTreeSet::from([1, 3]), "no forged message, no forged Done");
    assert_eq!(report.corrupt.len(), 1);
}

/// A torn batch in a recycled file can end right where a record of the
/// file's earlier life begins, with no end mark between: that record is
/// whole and once valid, but it is tagged for the old segment.
#[test]
fn a_stale_record_after_a_torn_batch_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(segment::family_dir(dir.path(), 0)).unwrap();
    let mut file = segment::encode_header(0, 5, 77).to_vec();
    let mut new = Vec::new();
    record::append_message(&mut new, &sample_envelope(50), b"", b"new\r\n");
    record::seal(&mut new, record::segment_tag(5, 77));
    let mut old = Vec::new();
    record::append_message(&mut old, &sample_envelope(30), b"", b"old\r\n");
    record::seal(&mut old, record::segment_tag(3, 12));
    file.extend_from_slice(&new);
    file.extend_from_slice(&old);
    file.extend_from_slice(&record::end_mark(record::segment_tag(3, 12), file.len() as u64));
    std::fs::write(segment::segment_path(dir.path(), 0, 5), &file).unwrap();
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, BTreeSet::from([50]));
    assert_eq!(report.torn.len(), 1, "the stale record is where the segment ends");
    assert!(report.corrupt.is_empty());
}

/// Writes a segment in an older format: `RPSEG00<version>` with `RPR<version>`
/// records of ids `ids`, each followed by the zero end mark that format uses.
fn old_segment(dir: &Path, seq: u64, version: u8, ids: &[u64]) -> Vec<(u64, usize)> {
    std::fs::create_dir_all(segment::family_dir(dir, 0)).unwrap();
    let mut file = segment::encode_header(0, seq, 0).to_vec();
    file[..8].copy_from_slice(format!("RPSEG00{version}").as_bytes());
    file[12..16].fill(0);
    let crc = crc32c::crc32c(&file[..24]);
    file[24..28].copy_from_slice(&crc.to_le_bytes());
    let mut at = Vec::new();
    for &id in ids {
        let start = file.len();
        record::append_message(
            &mut file,
            &sample_envelope(id),
            b"",
            format!("old format {id}\r\n").as_bytes(),
        );
        file[start..start + 4].copy_from_slice(format!("RPR{version}").as_bytes());
        if version == 2 {
            let crc =
                u32::from_le_bytes(file[start + 12..start + 16].try_into().unwrap()) ^ record::seq_tag(seq);
            file[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
        }
        at.push((id, start));
    }
    file.extend_from_slice(&[0; 16]);
    std::fs::write(segment::segment_path(dir, 0, seq), &file).unwrap();
    at
}

/// Segments of the two older formats still recover (and read back); the
/// untagged one is marked to be deleted, never recycled.
#[test]
fn segments_of_older_formats_still_recover() {
    let dir = tempfile::tempdir().unwrap();
    old_segment(dir.path(), 2, 1, &[70]);
    old_segment(dir.path(), 3, 2, &[71, 72]);
    let rec = scan(dir.path()).unwrap();
    assert!(rec.report.torn.is_empty() && rec.report.corrupt.is_empty());
    let fam = &rec.families[0];
    assert_eq!(fam.index.ids().map(|id| id.0).collect::<BTreeSet<_>>(), BTreeSet::from([70, 71, 72]));
    assert!(!fam.index.recyclable(2));
    assert!(fam.index.recyclable(3));
    for id in [70, 72] {
        let loc = fam.index.get(QueueId(id)).unwrap().loc;
        let (env, body) = block_on(crate::spool::read::read_message(dir.path(), 0, loc)).unwrap();
        assert_eq!((env.id, body), (QueueId(id), format!("old format {id}\r\n").into_bytes()));
    }
    // And a spool of them goes on in today's format.
    let mut fresh = write_messages(dir.path(), 80, 1, b"new\r\n");
    let l = fresh.remove(0);
    assert!(l.seq > 3);
    assert_eq!(live_ids(dir.path()).0, BTreeSet::from([70, 71, 72, 80]));
}

/// In an older segment a damaged record whose header still gives its
/// length costs that record alone; a zeroed header looks like the zero end
/// mark of that format, so it ends the segment as it always did.
#[test]
fn older_segments_skip_a_damaged_record_by_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let at = old_segment(dir.path(), 3, 2, &[1, 2, 3, 4]);
    patch(dir.path(), 3, |b| b[at[1].1 + HEADER_LEN + 3] ^= 1);
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, BTreeSet::from([1, 3, 4]));
    assert_eq!(report.corrupt.len(), 1);
    patch(dir.path(), 3, |b| b[at[2].1..at[2].1 + HEADER_LEN].fill(0));
    assert_eq!(live_ids(dir.path()).0, BTreeSet::from([1]));
}

/// A crash between renaming a dead segment and writing its new header
/// leaves a file whose header names an older segment: it holds nothing.
/// A header naming a newer segment is not that, and stops the start.
#[test]
fn an_interrupted_recycle_is_an_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_messages(dir.path(), 1, 1, b"body\r\n");
    let fdir = segment::family_dir(dir.path(), 0);
    let spent = fdir.join("spent");
    std::fs::copy(segment::segment_path(dir.path(), 0, 1), &spent).unwrap();
    std::fs::rename(&spent, segment::segment_path(dir.path(), 0, 9)).unwrap();
    let (found, report) = live_ids(dir.path());
    assert_eq!(found, BTreeSet::from([1]), "only the real segment 1 counts");
    assert!(report.torn.is_empty());

    std::fs::copy(segment::segment_path(dir.path(), 0, 9), fdir.join("0000000000000000.seg")).unwrap();
    std::fs::remove_file(segment::segment_path(dir.path(), 0, 9)).unwrap();
    // Segment 0 carrying segment 1's header: not a recycle.
    std::fs::rename(segment::segment_path(dir.path(), 0, 1), &spent).unwrap();
    std::fs::rename(fdir.join("0000000000000000.seg"), segment::segment_path(dir.path(), 0, 1)).unwrap();
    std::fs::rename(&spent, fdir.join("0000000000000000.seg")).unwrap();
    assert!(matches!(scan(dir.path()), Err(crate::spool::SpoolError::Corrupt { .. })));
}

/// A hand-made segment name near `u64::MAX` would make new segment numbers
/// wrap: the start is refused, naming the file.
#[test]
fn a_segment_number_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(segment::family_dir(dir.path(), 0)).unwrap();
    let seq = u64::MAX - 1;
    let mut file = segment::encode_header(0, seq, 5).to_vec();
    file.extend_from_slice(&record::end_mark(record::segment_tag(seq, 5), FILE_HEADER_LEN));
    let path = segment::segment_path(dir.path(), 0, seq);
    std::fs::write(&path, &file).unwrap();
    match scan(dir.path()) {
        Err(crate::spool::SpoolError::Corrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("out of range"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The largest number given is still fine.
    std::fs::remove_file(&path).unwrap();
    let seq = segment::MAX_SEQ;
    let mut file = segment::encode_header(0, seq, 5).to_vec();
    file.extend_from_slice(&record::end_mark(record::segment_tag(seq, 5), FILE_HEADER_LEN));
    std::fs::write(segment::segment_path(dir.path(), 0, seq), &file).unwrap();
    assert!(scan(dir.path()).is_ok());
}

#[test]
fn replacing_a_file_leaves_the_new_content_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    replace_file_durable(&path, b"old").unwrap();
    replace_file_durable(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.json")], "no temporary file left");
    assert!(
        replace_file_durable(&dir.path().join("missing/state.json"), b"x").is_err(),
        "no directory: an error"
    );
}

/// Families scanned on several threads give what one thread gives: the
/// same live messages per family, the highest id, and every damaged record
/// reported (in family order).
#[test]
fn families_scanned_at_once_give_what_one_thread_gives() {
    let dir = tempfile::tempdir().unwrap();
    let rec = scan(dir.path()).unwrap();
    let (fams, _) = assign(dir.path(), rec, 4).unwrap();
    let mut damaged = Vec::new();
    for (f, fam) in fams.into_iter().enumerate() {
        let spool = Spool::new(dir.path().to_path_buf(), fam, true, SEGMENT, Arc::default());
        let first = 1 + 100 * f as u64;
        let locs = block_on(async {
            let committer = monoio::spawn(spool.clone().run_committer());
            let mut locs = Vec::new();
            for id in first..first + 5 + f as u64 {
                let env = sample_envelope(id);
                locs.push(
                    spool
                        .append_message(&env, b"", b"Subject: s\r\n\r\nbody\r\n")
                        .await
                        .unwrap()
                        .unwrap()
                        .loc,
                );
            }
            spool.close();
            committer.await;
            locs
        });
        // One damaged record in families 1 and 3.
        if f % 2 == 1 {
            let loc = locs[2];
            let path = segment::segment_path(dir.path(), f as u32, loc.seq);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[loc.offset as usize + HEADER_LEN + 3] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
            damaged.push(path);
        }
    }
    let numbers = [0, 1, 2, 3];
    let summary = |threads: usize| {
        let scanned: Vec<_> =
            scan_families(dir.path(), &numbers, threads).into_iter().map(Result::unwrap).collect();
        let per_family: Vec<(u32, BTreeSet<u64>)> =
            scanned.iter().map(|(f, _, _)| (f.family, f.index.ids().map(|id| id.0).collect())).collect();
        let max_id = scanned.iter().map(|(_, _, id)| id.0).max();
        let corrupt: Vec<PathBuf> =
            scanned.iter().flat_map(|(_, r, _)| r.corrupt.iter().map(|c| c.0.clone())).collect();
        (per_family, max_id, corrupt)
    };
    let one = summary(1);
    assert_eq!(one, summary(3));
    assert_eq!(one, summary(8), "more threads than families");
    let (per_family, max_id, corrupt) = one;
    assert_eq!(per_family[0], (0, ids(1..=5, &[])));
    assert_eq!(per_family[1], (1, ids(101..=106, &[103])));
    assert_eq!(per_family[2], (2, ids(201..=207, &[])));
    assert_eq!(per_family[3], (3, ids(301..=308, &[303])));
    assert_eq!(max_id, Some(308));
    assert_eq!(corrupt, damaged);
    // And through `scan`, with as many threads as this machine has.
    let rec = scan(dir.path()).unwrap();
    assert_eq!(rec.max_id, QueueId(308));
    assert_eq!(rec.report.messages, 5 + 5 + 7 + 7, "26 stored, 2 damaged");
    assert_eq!(rec.report.corrupt.len(), 2);
}
