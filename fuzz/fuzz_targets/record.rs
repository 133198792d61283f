//! Spool records, both ways.
//! - From an untrusted disk: decoding anything never panics; a Progress or
//!   Done payload that decodes encodes back to the same bytes.
//! - Written by us: every envelope and progress the fuzzer can build
//!   decodes back into what was encoded (decode(encode(x)) == x), with the
//!   checksum and header check of any segment tag, and fails for another.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringpost::envelope::{BodyType, Envelope, Notify, QueueId, Recipient, Ret};
use ringpost::smtp::address::{Mailbox, ReversePath};
use ringpost::spool::record::{
    append_done, append_message, append_progress, check_message, decode_done, decode_message,
    decode_progress, seal, unseal, Header, ProgressRecord, HEADER_LEN,
};

/// A mailbox from fuzz bytes: a local part and a domain label, or a fixed
/// one when they do not parse.
fn mailbox(u: &mut Unstructured<'_>) -> arbitrary::Result<Mailbox> {
    let local: String = u.arbitrary()?;
    let label: String = u.arbitrary()?;
    Ok(Mailbox::parse(&format!("{local}@{label}.test"))
        .or_else(|_| Mailbox::parse("fallback@example.test"))
        .expect("a valid fallback"))
}

fn opt_text(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<String>> {
    Ok(if u.arbitrary()? { Some(u.arbitrary::<String>()?) } else { None })
}

fn envelope(u: &mut Unstructured<'_>) -> arbitrary::Result<Envelope> {
    let n = u.int_in_range(0..=6)?;
    let mut recipients = Vec::new();
    for _ in 0..n {
        recipients.push(Recipient {
            address: mailbox(u)?,
            notify: Notify::from_bits(u.arbitrary()?),
            orcpt: opt_text(u)?,
        });
    }
    Ok(Envelope {
        id: QueueId(u.arbitrary()?),
        received_at: u.arbitrary()?,
        reverse_path: if u.arbitrary()? { ReversePath::Mailbox(mailbox(u)?) } else { ReversePath::Null },
        recipients,
        body_type: *u.choose(&[BodyType::SevenBit, BodyType::EightBitMime, BodyType::BinaryMime])?,
        smtputf8: u.arbitrary()?,
        ret: *u.choose(&[None, Some(Ret::Full), Some(Ret::Headers)])?,
        envid: opt_text(u)?,
        client_ip: if u.arbitrary()? { Some(u.arbitrary::<std::net::IpAddr>()?) } else { None },
        helo: u.arbitrary()?,
        auth_user: opt_text(u)?,
        tenant: opt_text(u)?,
        campaign: opt_text(u)?,
        requiretls: u.arbitrary()?,
        tls_not_required: u.arbitrary()?,
    })
}

/// Seals `rec` for `tag`, checks it, and that another tag fails.
fn sealed_round_trip(mut rec: Vec<u8>, tag: u32) -> Vec<u8> {
    let plain = rec.clone();
    seal(&mut rec, tag);
    let h = Header::parse(&rec).expect("our own header");
    h.verify(&rec[HEADER_LEN..], tag).expect("our own checksum");
    assert!(h.verify(&rec[HEADER_LEN..], tag ^ 1).is_err(), "another tag fails");
    unseal(&mut rec, &h, tag);
    assert_eq!(rec, plain, "unseal undoes seal");
    rec
}

fn ours(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let tag: u32 = u.arbitrary()?;
    let env = envelope(&mut u)?;
    let body: Vec<u8> = u.arbitrary()?;
    let mut rec = Vec::new();
    append_message(&mut rec, &env, b"", &body);
    let rec = sealed_round_trip(rec, tag);
    let (decoded, body_at) = decode_message(&rec[HEADER_LEN..]).expect("our own message decodes");
    let fits = [&env.helo].iter().all(|s| s.len() <= 65_535)
        && env.envid.as_ref().is_none_or(|s| s.len() <= 65_535)
        && env.auth_user.as_ref().is_none_or(|s| s.len() <= 65_535)
        && env.recipients.iter().all(|r| r.orcpt.as_ref().is_none_or(|s| s.len() <= 65_535));
    // What fits the format comes back the same; what does not is caught by
    // the check the writer makes before storing.
    assert_eq!(decoded == env, fits);
    assert_eq!(check_message(&rec, &env).is_ok(), fits);
    assert_eq!(&rec[HEADER_LEN + body_at..], &body[..]);

    let p = ProgressRecord {
        id: QueueId(u.arbitrary()?),
        attempts: u.arbitrary()?,
        next_attempt: u.arbitrary()?,
        last_error: u.arbitrary()?,
        done: u.arbitrary()?,
        delay_notified: u.arbitrary()?,
    };
    let mut rec = Vec::new();
    append_progress(&mut rec, &p);
    let rec = sealed_round_trip(rec, tag);
    let back = decode_progress(&rec[HEADER_LEN..]).expect("our own progress decodes");
    assert_eq!(back == p, p.last_error.len() <= 65_535);
    let mut rec = Vec::new();
    append_done(&mut rec, p.id);
    let rec = sealed_round_trip(rec, tag);
    assert_eq!(decode_done(&rec[HEADER_LEN..]), Ok(p.id));
    Ok(())
}

fn theirs(data: &[u8]) {
    if let Ok(h) = Header::parse(data) {
        let payload = &data[HEADER_LEN.min(data.len())..];
        let _ = h.fits(data.len() as u32);
        let _ = h.verify(payload, data.len() as u32);
    }
    if let Ok((env, body_at)) = decode_message(data) {
        assert!(body_at <= data.len());
        let _ = env.recipients.len();
    }
    // A payload that decodes is canonical: encoding it again gives it back.
    if let Ok(p) = decode_progress(data) {
        let mut rec = Vec::new();
        append_progress(&mut rec, &p);
        assert_eq!(&rec[HEADER_LEN..], data);
    }
    if let Ok(id) = decode_done(data) {
        let mut rec = Vec::new();
        append_done(&mut rec, id);
        assert_eq!(&rec[HEADER_LEN..], data);
    }
}

fuzz_target!(|data: &[u8]| {
    theirs(data);
    let _ = ours(data);
});
