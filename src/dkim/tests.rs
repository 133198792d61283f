//! The signer against a small verifier written from RFC 6376 section 6
//! (the independent check is dkimpy, in tests/dkim.rs), and its edges.

use super::*;

const RSA_PKCS1: &[u8] = include_bytes!("testdata/rsa2048-pkcs1.pem");
const RSA_PKCS8: &[u8] = include_bytes!("testdata/rsa2048-pkcs8.pem");
const RSA_1024: &[u8] = include_bytes!("testdata/rsa1024.pem");
const ED25519: &[u8] = include_bytes!("testdata/ed25519.pem");
const EC: &[u8] = include_bytes!("testdata/ec.pem");
/// `openssl pkey -pubout -outform DER | base64` of the RSA key.
const RSA_PUB: &str = include_str!("testdata/rsa2048.pub.b64");
/// The raw 32-byte public key of the Ed25519 key (the DER's tail).
const ED25519_PUB: &str = include_str!("testdata/ed25519.pub.b64");

const MESSAGE: &[u8] = b"Received: from x by y; Mon, 30 Nov 2026 07:00:00 +0000\r\n\
From: \"Acme News\" <news@Example.COM>\r\n\
To: someone@elsewhere.test\r\n\
Subject:  Hello\r\n  there \r\n\
List-Unsubscribe: <https://u.example.com/x>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
X-Unsigned: yes\r\n\
\r\n\
Body  line\t one \r\n\r\nlast\r\n\r\n\r\n";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).unwrap()
}

/// The tags of a signature header field's value (white space removed).
fn tags(sig: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8(sig.to_vec()).unwrap();
    let value = text.split_once(':').unwrap().1;
    value
        .split(';')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (k, v) = t.split_once('=').unwrap();
            (k.trim().to_owned(), v.chars().filter(|c| !c.is_whitespace()).collect())
        })
        .collect()
}

fn tag(sig: &[u8], name: &str) -> String {
    tags(sig).into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap()
}

/// Verifies the topmost DKIM-Signature of `signed` with `public`: body
/// hash, then the header hash over the `h=` fields picked bottom-up and
/// the signature field with its `b=` value removed.
fn verify(signed: &[u8], public: &[u8]) -> Result<(), String> {
    let (fields, body_at) = mail::fields(signed);
    let sig = fields.iter().find(|f| f.is(signed, "dkim-signature")).ok_or("no signature")?;
    let raw = &signed[sig.raw.clone()];
    let mut body = Vec::new();
    canon::body(&signed[body_at..], |p| body.extend_from_slice(p));
    let bh = ring::digest::digest(&ring::digest::SHA256, &body);
    if b64(bh.as_ref()) != tag(raw, "bh") {
        return Err("body hash".into());
    }
    let mut data = Vec::new();
    let mut used = vec![false; fields.len()];
    for name in tag(raw, "h").split(':') {
        let pick = (0..fields.len()).rev().find(|&i| !used[i] && fields[i].is(signed, name));
        if let Some(i) = pick {
            used[i] = true;
            canon::header(&signed[fields[i].raw.clone()], true, &mut data);
        }
    }
    let text = std::str::from_utf8(raw).unwrap();
    let b_at = text.rfind("b=").unwrap();
    let stripped = format!("{}b=", &text[..b_at]);
    canon::header(stripped.as_bytes(), false, &mut data);
    let sig = unb64(&tag(raw, "b"));
    let ok = match tag(raw, "a").as_str() {
        "rsa-sha256" => ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            spki_to_pkcs1(public),
        )
        .verify(&data, &sig),
        "ed25519-sha256" => ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(ring::digest::digest(&ring::digest::SHA256, &data).as_ref(), &sig),
        a => return Err(format!("algorithm {a}")),
    };
    ok.map_err(|_| "signature".to_owned())
}

/// The RSAPublicKey inside a SubjectPublicKeyInfo (2048-bit sizes only).
fn spki_to_pkcs1(spki: &[u8]) -> &[u8] {
    // 30 82 LL LL | 30 0d <algorithm> | 03 82 LL LL 00 | RSAPublicKey
    &spki[4 + 15 + 5..]
}

fn signed(signer: &Signer, message: &[u8]) -> Vec<u8> {
    let mut out = signer.sign(message, 1_795_000_000).unwrap();
    out.extend_from_slice(message);
    out
}

#[test]
fn rsa_and_ed25519_signatures_verify() {
    for (pem, public) in
        [(RSA_PKCS1, unb64(RSA_PUB)), (RSA_PKCS8, unb64(RSA_PUB)), (ED25519, unb64(ED25519_PUB))]
    {
        let key = Key::from_pem(pem).unwrap();
        let s = Signer::new("example.com", "s1", key, &[]);
        let out = signed(&s, MESSAGE);
        verify(&out, &public).unwrap();
        // Any change to a signed field or the body breaks it; an unsigned
        // field or white space the canonicalization ignores does not.
        let text = String::from_utf8(out.clone()).unwrap();
        for (from, to, holds) in [
            ("Hello", "Hullo", false),
            ("last", "lost", false),
            ("X-Unsigned: yes", "X-Unsigned: no", true),
            ("Body  line", "Body line", true),
            ("last\r\n\r\n\r\n", "last\r\n", true),
            ("Received: from x", "Received: from z", true),
        ] {
            let changed = text.replacen(from, to, 1);
            assert_eq!(verify(changed.as_bytes(), &public).is_ok(), holds, "{from} -> {to}");
        }
        // A From added above (or below) the signed one breaks it: over-signing.
        let added = format!("From: evil@attacker.test\r\n{text}");
        assert!(verify(added.as_bytes(), &public).is_err());
    }
}

#[test]
fn the_signature_field_is_well_formed() {
    let s = Signer::new("Example.com", "s2026", Key::from_pem(RSA_PKCS8).unwrap(), &[]);
    let sig = s.sign(MESSAGE, 1_795_000_000).unwrap();
    let text = String::from_utf8(sig.clone()).unwrap();
    assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;"), "{text}");
    assert!(text.ends_with("\r\n"));
    for line in text.trim_end().split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
    assert_eq!(tag(&sig, "d"), "example.com");
    assert_eq!(tag(&sig, "s"), "s2026");
    assert_eq!(tag(&sig, "t"), "1795000000");
    // Present listed fields, bottom-up, each instance; From over-signed.
    assert_eq!(tag(&sig, "h"), "from:subject:to:list-unsubscribe:list-unsubscribe-post:from");
    assert_eq!(unb64(&tag(&sig, "b")).len(), 256);
}

#[test]
fn body_hashes_of_known_bodies() {
    let s = Signer::new("example.com", "s", Key::from_pem(ED25519).unwrap(), &[]);
    // SHA-256 of "" and of "x\r\n" (RFC 6376 relaxed: an empty body is empty).
    for (body, want) in [
        ("", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
        ("\r\n\r\n", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
        ("x  \r\n", "s14J+iztnrytnRYzb7lhFG/jS/vrxWJnnahfijFMnco="),
    ] {
        let m = format!("From: a@example.com\r\n\r\n{body}");
        let sig = s.sign(m.as_bytes(), 0).unwrap();
        assert_eq!(tag(&sig, "bh"), want, "{body:?}");
    }
}

#[test]
fn configured_headers_replace_the_default_but_from_stays() {
    let s = Signer::new(
        "example.com",
        "s",
        Key::from_pem(ED25519).unwrap(),
        &["Subject".into(), "X-Unsigned".into()],
    );
    let sig = s.sign(MESSAGE, 0).unwrap();
    assert_eq!(tag(&sig, "h"), "from:subject:x-unsigned:from");
    let mut out = sig;
    out.extend_from_slice(MESSAGE);
    verify(&out, &unb64(ED25519_PUB)).unwrap();
}

#[test]
fn repeated_fields_are_all_signed_bottom_up() {
    let m = b"From: a@example.com\r\nTo: one@x.test\r\nTo: two@x.test\r\n\r\nbody\r\n";
    let s = Signer::new("example.com", "s", Key::from_pem(ED25519).unwrap(), &[]);
    let out = signed(&s, m);
    assert_eq!(tag(&out, "h"), "from:to:to:from");
    verify(&out, &unb64(ED25519_PUB)).unwrap();
    let swapped = String::from_utf8(out)
        .unwrap()
        .replace("one@", "tmp@")
        .replace("two@", "one@")
        .replace("tmp@", "two@");
    assert!(
        verify(swapped.as_bytes(), &unb64(ED25519_PUB)).is_err(),
        "the order of repeated fields is signed"
    );
}

#[test]
fn keys_that_do_not_load_say_why() {
    let table: [(&[u8], &str); 5] = [
        (RSA_1024, "fewer than 2048 bits"),
        (EC, "EC key"),
        (b"not a pem", "no private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "neither"),
        (include_bytes!("testdata/rsa2048.pub.b64"), "no private key"),
    ];
    for (pem, want) in table {
        let e = Key::from_pem(pem).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn dns_records_carry_the_public_keys() {
    let rsa = Key::from_pem(RSA_PKCS1).unwrap().dns_record();
    assert_eq!(rsa, format!("v=DKIM1; k=rsa; p={}", RSA_PUB.trim()));
    let ed = Key::from_pem(ED25519).unwrap().dns_record();
    assert_eq!(ed, format!("v=DKIM1; k=ed25519; p={}", ED25519_PUB.trim()));
}

#[test]
fn the_from_domain_picks_the_signers() {
    let signers = Signers::new(vec![
        Signer::new("example.com", "a", Key::from_pem(RSA_PKCS8).unwrap(), &[]),
        Signer::new("example.com", "b", Key::from_pem(ED25519).unwrap(), &[]),
        Signer::new("other.test", "c", Key::from_pem(ED25519).unwrap(), &[]),
    ]);
    let table: &[(&str, &[&str])] = &[
        ("From: news@example.com\r\n", &["a", "b"]),
        ("From: \"Name, with <odd> @ chars\" <news@EXAMPLE.com>\r\n", &["a", "b"]),
        ("From: news@example.com (comment @ other.test)\r\n", &["a", "b"]),
        ("From: =?utf-8?q?N=C3=A9ws?= <n@other.test>\r\n", &["c"]),
        ("From: a@example.com, b@example.com\r\nSender: a@example.com\r\n", &["a", "b"]),
        ("From: a@example.com, b@other.test\r\n", &[]),
        ("From: a@example.com\r\nFrom: b@example.com\r\n", &[]),
        ("From: a@unknown.test\r\n", &[]),
        ("From: a@sub.example.com\r\n", &[]),
        ("From: undisclosed\r\n", &[]),
        ("To: a@example.com\r\n", &[]),
        ("From: a@example.com.\r\n", &["a", "b"]),
    ];
    for (head, want) in table {
        let m = format!("{head}Subject: x\r\n\r\nbody\r\n");
        let got: Vec<&str> = signers.for_message(m.as_bytes()).iter().map(|s| s.selector.as_str()).collect();
        assert_eq!(got, *want, "{head:?}");
    }
}

#[test]
fn odd_messages_sign_without_panicking() {
    let s = Signer::new("example.com", "s", Key::from_pem(ED25519).unwrap(), &[]);
    for m in
        [&b""[..], b"\r\n", b"no header block at all", b"From: a@example.com", b"\xff\xfe: \x00\r\n\r\n\xff"]
    {
        let out = signed(&s, m);
        verify(&out, &unb64(ED25519_PUB)).unwrap();
    }
}
