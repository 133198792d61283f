//! DANE for SMTP (RFC 7672, with RFC 7671's operational rules): what a
//! host's TLSA lookup means for the connection, and whether the certificate
//! chain a server shows matches its TLSA records.
//!
//! Pure: the lookup result and the time are parameters; certificates are
//! parsed and chains checked by rustls-webpki, hashes by ring.
//!
//! - Only validated answers count (the resolver's AD bit): an insecure or
//!   absent TLSA RRset leaves the host to the usual TLS policy.
//! - A lookup that failed (SERVFAIL: a validating resolver says that for
//!   bogus data too) means "do not connect": an attacker who can break the
//!   lookup must not get plain text.
//! - Usable records are DANE-TA(2) and DANE-EE(3) with selector Cert(0) or
//!   SPKI(1) and matching Full(0), SHA2-256(1) or SHA2-512(2). PKIX-TA(0)
//!   and PKIX-EE(1) are unusable for SMTP (§3.1.3). Records published but
//!   none usable: TLS is still mandatory, without authentication (§2.2).
//! - DANE-EE: the server's own certificate (or key) matches; names and
//!   dates are not checked (§3.1.1). DANE-TA: a certificate the server
//!   sends as part of its chain matches, and the chain from the server's
//!   certificate up to it verifies, valid now, for the MX host name or the
//!   next-hop domain (§3.2.3).

use rustls_pki_types::{CertificateDer, ServerName, SignatureVerificationAlgorithm, UnixTime};

use crate::dns::cache::Lookup;
use crate::dns::wire::{Answer, Tlsa};

/// What a host's TLSA lookup means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No validated TLSA records: DANE does not apply.
    None,
    /// TLS only, and the certificate must match one of these (none: any
    /// certificate, encryption without authentication).
    Verify(Vec<Tlsa>),
    /// Do not connect to this host now: why.
    Refuse(String),
}

/// The decision for `host` from its TLSA lookup (`_<port>._tcp.<host>`).
/// Call it only for hosts whose MX and address answers were validated.
pub fn decide(host: &str, lookup: &Lookup) -> Decision {
    let response = match lookup {
        Err(e) => return Decision::Refuse(format!("DANE: TLSA lookup for {host} failed: {e}")),
        Ok(r) => r,
    };
    if !response.secure {
        return Decision::None;
    }
    match &response.answer {
        Answer::Tlsa(records) => Decision::Verify(records.iter().filter(|r| usable(r)).cloned().collect()),
        _ => Decision::None,
    }
}

/// RFC 7672 §3.1: the records an SMTP client uses.
pub fn usable(r: &Tlsa) -> bool {
    let data_ok = match r.matching {
        0 => !r.data.is_empty(),
        1 => r.data.len() == 32,
        2 => r.data.len() == 64,
        _ => false,
    };
    matches!(r.usage, 2 | 3) && matches!(r.selector, 0 | 1) && data_ok
}

/// Whether `cert` (DER) is what `r` describes (selector and matching type).
fn matches(r: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected: Vec<u8> = match r.selector {
        0 => cert.as_ref().to_vec(),
        1 => match webpki::EndEntityCert::try_from(cert) {
            Ok(c) => c.subject_public_key_info().as_ref().to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    match r.matching {
        0 => selected == r.data,
        1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref() == r.data.as_slice(),
        2 => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref() == r.data.as_slice(),
        _ => false,
    }
}

/// Checks the chain a server sent (`chain[0]` its own certificate) against
/// `records` (already [`usable`]); `names` are the acceptable reference
/// identities for DANE-TA (the MX host name, the next-hop domain).
pub fn verify(
    records: &[Tlsa],
    chain: &[CertificateDer<'_>],
    names: &[&str],
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), String> {
    if records.is_empty() {
        // Records published, none usable: encrypted, not authenticated.
        return Ok(());
    }
    let Some(ee) = chain.first() else { return Err("DANE: the server sent no certificate".into()) };
    if records.iter().any(|r| r.usage == 3 && matches(r, ee)) {
        return Ok(());
    }
    let mut why = "no TLSA record matches the server's certificate or chain".to_string();
    for (i, ta) in chain.iter().enumerate().skip(1) {
        if !records.iter().any(|r| r.usage == 2 && matches(r, ta)) {
            continue;
        }
        match verify_to_anchor(ee, &chain[1..i], ta, names, now, algs) {
            Ok(()) => return Ok(()),
            Err(e) => why = format!("the chain to the TLSA trust anchor does not verify: {e}"),
        }
    }
    Err(format!("DANE: {why}"))
}

/// DANE-TA: the chain from `ee` through `intermediates` to `anchor`,
/// valid at `now` for one of `names`.
fn verify_to_anchor(
    ee: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor: &CertificateDer<'_>,
    names: &[&str],
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(anchor).map_err(|e| format!("trust anchor: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(ee).map_err(|e| format!("server certificate: {e}"))?;
    cert.verify_for_usage(
        algs,
        std::slice::from_ref(&anchor),
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    let valid_for = |name: &&str| {
        ServerName::try_from(*name).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
    };
    if names.iter().any(valid_for) {
        Ok(())
    } else {
        Err(format!("certificate not valid for {}", names.join(" or ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::Response;

    fn algs() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.all
    }

    fn tlsa(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa { usage, selector, matching, data: data.to_vec() }
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
    }

    fn sha512(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA512, b).as_ref().to_vec()
    }

    /// A CA, an intermediate it signs, and a leaf for `names` under the
    /// intermediate: (leaf, intermediate, root) DER and the leaf's SPKI.
    struct Chain {
        leaf: CertificateDer<'static>,
        inter: CertificateDer<'static>,
        root: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
        root_spki: Vec<u8>,
    }

    fn chain(names: &[&str]) -> Chain {
        let ca = |name: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p
        };
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root_params = ca("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(root_params, &root_key);
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let inter_params = ca("intermediate");
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = rcgen::Issuer::new(inter_params, &inter_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &inter_issuer).unwrap();
        Chain {
            leaf: leaf.der().clone(),
            inter: inter.der().clone(),
            root: root.der().clone(),
            leaf_spki: rcgen::PublicKeyData::subject_public_key_info(&leaf_key),
            root_spki: rcgen::PublicKeyData::subject_public_key_info(&root_key),
        }
    }

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000))
    }

    #[test]
    fn lookups_decide_whether_dane_applies() {
        let rec = tlsa(3, 1, 1, &[7; 32]);
        let ok = |answer, secure| -> Lookup { Ok(Response { answer, ttl: 60, secure }) };
        let table: Vec<(Lookup, Decision)> = vec![
            (ok(Answer::Tlsa(vec![rec.clone()]), true), Decision::Verify(vec![rec.clone()])),
            // Not validated: as if there were none.
            (ok(Answer::Tlsa(vec![rec.clone()]), false), Decision::None),
            (ok(Answer::NoData, true), Decision::None),
            (ok(Answer::NxDomain, true), Decision::None),
            // Published, none usable (PKIX-EE; a SHA-256 of the wrong length;
            // an unknown matching type): TLS without authentication.
            (
                ok(
                    Answer::Tlsa(vec![tlsa(1, 1, 1, &[7; 32]), tlsa(3, 1, 1, &[7; 31]), tlsa(3, 1, 9, &[1])]),
                    true,
                ),
                Decision::Verify(vec![]),
            ),
        ];
        for (lookup, want) in table {
            assert_eq!(decide("mx.test", &lookup), want, "{lookup:?}");
        }
        let Decision::Refuse(why) = decide("mx.test", &Err("SERVFAIL".into())) else { panic!() };
        assert!(why.contains("mx.test") && why.contains("SERVFAIL"), "{why}");
    }

    #[test]
    fn usability_of_records() {
        for (r, want) in [
            (tlsa(3, 1, 1, &[0; 32]), true),
            (tlsa(2, 0, 2, &[0; 64]), true),
            (tlsa(3, 0, 0, &[1, 2, 3]), true),
            (tlsa(3, 0, 0, &[]), false),
            (tlsa(0, 1, 1, &[0; 32]), false),
            (tlsa(1, 1, 1, &[0; 32]), false),
            (tlsa(4, 1, 1, &[0; 32]), false),
            (tlsa(3, 2, 1, &[0; 32]), false),
            (tlsa(3, 1, 2, &[0; 32]), false),
        ] {
            assert_eq!(usable(&r), want, "{r:?}");
        }
    }

    #[test]
    fn dane_ee_matches_the_servers_own_certificate_or_key_whatever_its_name() {
        let c = chain(&["some-other-name.test"]);
        let sent = [c.leaf.clone(), c.inter.clone()];
        for r in [
            tlsa(3, 1, 1, &sha256(&c.leaf_spki)),
            tlsa(3, 1, 2, &sha512(&c.leaf_spki)),
            tlsa(3, 1, 0, &c.leaf_spki),
            tlsa(3, 0, 1, &sha256(&c.leaf)),
            tlsa(3, 0, 0, &c.leaf),
        ] {
            assert_eq!(verify(std::slice::from_ref(&r), &sent, &["mx.test"], now(), algs()), Ok(()), "{r:?}");
        }
        // Another key; the intermediate's hash as DANE-EE; a TA record for the leaf.
        let other = chain(&["mx.test"]);
        for r in [
            tlsa(3, 1, 1, &sha256(&other.leaf_spki)),
            tlsa(3, 0, 1, &sha256(&c.inter)),
            tlsa(2, 1, 1, &sha256(&c.leaf_spki)),
        ] {
            let e = verify(std::slice::from_ref(&r), &sent, &["mx.test"], now(), algs()).unwrap_err();
            assert!(e.contains("no TLSA record matches"), "{r:?}: {e}");
        }
        // One matching record among others is enough.
        let records = [tlsa(3, 1, 1, &sha256(&other.leaf_spki)), tlsa(3, 1, 1, &sha256(&c.leaf_spki))];
        assert_eq!(verify(&records, &sent, &["mx.test"], now(), algs()), Ok(()));
        assert!(verify(&records, &[], &["mx.test"], now(), algs()).is_err());
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_a_valid_path_and_the_name() {
        let c = chain(&["mx.dane.test"]);
        let full = [c.leaf.clone(), c.inter.clone(), c.root.clone()];
        let root = tlsa(2, 0, 1, &sha256(&c.root));
        let root_key = tlsa(2, 1, 1, &sha256(&c.root_spki));
        let inter = tlsa(2, 0, 1, &sha256(&c.inter));
        for r in [&root, &root_key, &inter] {
            assert_eq!(
                verify(std::slice::from_ref(r), &full, &["mx.dane.test"], now(), algs()),
                Ok(()),
                "{r:?}"
            );
            // The next-hop domain is an acceptable name too.
            assert_eq!(
                verify(std::slice::from_ref(r), &full, &["mx.x.test", "mx.dane.test"], now(), algs()),
                Ok(())
            );
        }
        // The wrong name.
        let e = verify(std::slice::from_ref(&root), &full, &["other.test"], now(), algs()).unwrap_err();
        assert!(e.contains("not valid for other.test"), "{e}");
        // The anchor not sent: DANE-TA cannot be checked.
        let short = [c.leaf.clone(), c.inter.clone()];
        assert!(verify(std::slice::from_ref(&root), &short, &["mx.dane.test"], now(), algs()).is_err());
        // The intermediate missing between leaf and anchor: no path.
        let gap = [c.leaf.clone(), c.root.clone()];
        let e = verify(std::slice::from_ref(&root), &gap, &["mx.dane.test"], now(), algs()).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // Another CA's anchor, sent by the server, does not vouch for this leaf.
        let other = chain(&["mx.dane.test"]);
        let mixed = [c.leaf.clone(), c.inter.clone(), other.root.clone()];
        let e = verify(&[tlsa(2, 0, 1, &sha256(&other.root))], &mixed, &["mx.dane.test"], now(), algs())
            .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // Expired (rcgen's leaves end in 4096; the year 5000 is past that).
        let late = UnixTime::since_unix_epoch(std::time::Duration::from_secs(95_000_000_000));
        assert!(verify(std::slice::from_ref(&root), &full, &["mx.dane.test"], late, algs()).is_err());
    }

    #[test]
    fn no_usable_records_means_any_certificate() {
        let c = chain(&["x.test"]);
        assert_eq!(verify(&[], &[c.leaf], &["mx.test"], now(), algs()), Ok(()));
    }

    #[test]
    fn garbage_certificates_match_nothing() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let e = verify(
            &[tlsa(3, 1, 1, &[0; 32]), tlsa(2, 1, 1, &[0; 32])],
            &[junk.clone(), junk],
            &["m"],
            now(),
            algs(),
        );
        assert!(e.is_err());
    }
}
