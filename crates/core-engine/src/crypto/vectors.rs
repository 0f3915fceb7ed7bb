//! Project Wycheproof and NIST CAVP vectors (`../shared/testvectors/`) through the same
//! functions the RPCs use: every `valid` case accepted, every `invalid` case rejected.
//! Cases our API cannot express (other key, nonce or tag sizes) are counted as skipped,
//! never as passed. Run with `--nocapture` to see the counts.

use std::path::PathBuf;

use serde_json::Value;

use super::*;

fn vectors(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testvectors")
        .join(path)
}

fn wycheproof(file: &str) -> Value {
    let path = vectors(&format!("wycheproof/{file}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn bytes(test: &Value, field: &str) -> Vec<u8> {
    hex::decode(test[field].as_str().unwrap_or_else(|| panic!("{field}"))).unwrap()
}

/// Passed / skipped counts of one suite, asserted and printed.
#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    skipped: usize,
}

impl Tally {
    fn record(&mut self, test: &Value, accepted: bool) {
        let valid = test["result"] == "valid";
        assert_eq!(
            accepted, valid,
            "tcId {} ({}): expected {}",
            test["tcId"], test["comment"], test["result"]
        );
        if valid {
            self.valid += 1;
        } else {
            self.invalid += 1;
        }
    }

    fn report(&self, suite: &str, total: usize) {
        println!(
            "{suite}: {} valid accepted, {} invalid rejected, {} skipped (not expressible), {total} in all",
            self.valid, self.invalid, self.skipped
        );
        assert_eq!(
            self.valid + self.invalid + self.skipped,
            total,
            "{suite}: every case counted"
        );
    }
}

fn tests(file: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    file["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| {
            group["tests"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |test| (group, test))
        })
}

fn total(file: &Value) -> usize {
    file["numberOfTests"].as_u64().unwrap() as usize
}

fn aead_suite(file: &str, alg: AeadAlg) -> Tally {
    let file = wycheproof(file);
    let mut tally = Tally::default();
    for (group, test) in tests(&file) {
        if group["keySize"] != 256 || group["ivSize"] != 96 || group["tagSize"] != 128 {
            tally.skipped += 1;
            continue;
        }
        let key = AeadKey::new(alg, &bytes(test, "key")).unwrap();
        let nonce: [u8; NONCE_LEN] = bytes(test, "iv").try_into().unwrap();
        let (aad, msg) = (bytes(test, "aad"), bytes(test, "msg"));
        let sealed = [bytes(test, "ct"), bytes(test, "tag")].concat();
        let opened = key.open_with_nonce(nonce, &aad, &sealed);
        if test["result"] == "valid" {
            let mut out = Vec::new();
            key.seal_into(nonce, &aad, &msg, &mut out).unwrap();
            assert_eq!(out, sealed, "tcId {}: seal", test["tcId"]);
            assert_eq!(
                opened.as_deref().ok(),
                Some(msg.as_slice()),
                "tcId {}",
                test["tcId"]
            );
            // The envelope path: nonce || ciphertext || tag.
            let body = [nonce.as_slice(), &sealed].concat();
            assert_eq!(key.open(&aad, &body).unwrap(), msg);
        }
        tally.record(test, opened.is_ok());
    }
    tally.report(&format!("{alg:?}"), total(&file));
    tally
}

#[test]
fn wycheproof_aes_256_gcm() {
    let tally = aead_suite("aes_gcm_test.json", AeadAlg::Aes256Gcm);
    assert!(tally.valid + tally.invalid >= 66, "{tally:?}");
}

#[test]
fn wycheproof_chacha20_poly1305() {
    let tally = aead_suite("chacha20_poly1305_test.json", AeadAlg::ChaCha20Poly1305);
    assert!(tally.valid + tally.invalid >= 300, "{tally:?}");
}

#[test]
fn wycheproof_ed25519() {
    let file = wycheproof("ed25519_test.json");
    let mut tally = Tally::default();
    for (group, test) in tests(&file) {
        let public = hex::decode(group["publicKey"]["pk"].as_str().unwrap()).unwrap();
        tally.record(
            test,
            verify_ed25519(&public, &bytes(test, "msg"), &bytes(test, "sig")),
        );
    }
    tally.report("Ed25519", total(&file));
    assert_eq!(tally.skipped, 0);
}

fn ecdsa_suite(file: &str, encoding: EcdsaEncoding) {
    let file = wycheproof(file);
    let mut tally = Tally::default();
    for (group, test) in tests(&file) {
        let public = hex::decode(group["publicKey"]["uncompressed"].as_str().unwrap()).unwrap();
        tally.record(
            test,
            verify_p256(&public, &bytes(test, "msg"), &bytes(test, "sig"), encoding),
        );
    }
    tally.report(&format!("ECDSA P-256 {encoding:?}"), total(&file));
    assert_eq!(tally.skipped, 0);
}

#[test]
fn wycheproof_ecdsa_p256_der() {
    ecdsa_suite("ecdsa_secp256r1_sha256_test.json", EcdsaEncoding::Der);
}

#[test]
fn wycheproof_ecdsa_p256_fixed() {
    ecdsa_suite(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        EcdsaEncoding::Fixed,
    );
}

#[test]
fn wycheproof_hmac_sha256() {
    let file = wycheproof("hmac_sha256_test.json");
    let mut tally = Tally::default();
    for (group, test) in tests(&file) {
        if group["tagSize"] != 256 {
            // Our API never truncates tags.
            tally.skipped += 1;
            continue;
        }
        let (key, msg, tag) = (bytes(test, "key"), bytes(test, "msg"), bytes(test, "tag"));
        if test["result"] == "valid" {
            assert_eq!(hmac_sha256(&key, &msg), tag, "tcId {}", test["tcId"]);
        }
        tally.record(test, verify_hmac_sha256(&key, &msg, &tag));
    }
    tally.report("HMAC-SHA256", total(&file));
    assert!(tally.valid + tally.invalid >= 87);
}

#[test]
fn wycheproof_hkdf_sha256() {
    let file = wycheproof("hkdf_sha256_test.json");
    let mut tally = Tally::default();
    for (_, test) in tests(&file) {
        let size = test["size"].as_u64().unwrap() as usize;
        let okm = hkdf_sha256(
            &bytes(test, "ikm"),
            &bytes(test, "salt"),
            &bytes(test, "info"),
            size,
        );
        if test["result"] == "valid" {
            assert_eq!(
                okm.as_deref().map(Vec::as_slice).ok(),
                Some(bytes(test, "okm").as_slice())
            );
        }
        tally.record(test, okm.is_ok());
    }
    tally.report("HKDF-SHA256", total(&file));
    assert_eq!(tally.skipped, 0);
}

/// The records of a CAVP `.rsp` file: `key = value` lines grouped by blank lines, each
/// with the `[section]` parameters in force.
fn cavp(file: &str) -> Vec<std::collections::HashMap<String, String>> {
    let path = vectors(&format!("nist-cavp/{file}"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut sections = std::collections::HashMap::new();
    let mut records = Vec::new();
    let mut record = std::collections::HashMap::new();
    for line in text.lines().map(str::trim).chain([""]) {
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !record.is_empty() {
                let mut full: std::collections::HashMap<String, String> = sections.clone();
                full.extend(std::mem::take(&mut record));
                records.push(full);
            }
        } else if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some((k, v)) = section.split_once('=') {
                sections.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        } else if let Some((k, v)) = line.split_once('=') {
            record.insert(k.trim().to_owned(), v.trim().to_owned());
        } else {
            record.insert(line.to_owned(), String::new());
        }
    }
    records
}

fn unhex(record: &std::collections::HashMap<String, String>, field: &str) -> Vec<u8> {
    hex::decode(
        record
            .get(field)
            .unwrap_or_else(|| panic!("{field} in {record:?}")),
    )
    .unwrap()
}

#[test]
fn nist_cavp_aes_256_gcm() {
    let mut encrypted = 0;
    for record in cavp("gcmEncryptExtIV256_k256_iv96_t128.rsp") {
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &unhex(&record, "Key")).unwrap();
        let nonce: [u8; NONCE_LEN] = unhex(&record, "IV").try_into().unwrap();
        let mut out = Vec::new();
        key.seal_into(
            nonce,
            &unhex(&record, "AAD"),
            &unhex(&record, "PT"),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            [unhex(&record, "CT"), unhex(&record, "Tag")].concat(),
            "{record:?}"
        );
        encrypted += 1;
    }
    let (mut accepted, mut rejected) = (0, 0);
    for record in cavp("gcmDecrypt256_k256_iv96_t128.rsp") {
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &unhex(&record, "Key")).unwrap();
        let nonce: [u8; NONCE_LEN] = unhex(&record, "IV").try_into().unwrap();
        let sealed = [unhex(&record, "CT"), unhex(&record, "Tag")].concat();
        let opened = key.open_with_nonce(nonce, &unhex(&record, "AAD"), &sealed);
        if record.contains_key("FAIL") {
            assert!(opened.is_err(), "{record:?}");
            rejected += 1;
        } else {
            assert_eq!(opened.unwrap(), unhex(&record, "PT"), "{record:?}");
            accepted += 1;
        }
    }
    println!(
        "NIST CAVP AES-256-GCM: {encrypted} encryptions, {accepted} decryptions, {rejected} forgeries rejected"
    );
    assert!(encrypted >= 375 && accepted > 0 && rejected > 0);
}

#[test]
fn nist_cavp_sha256() {
    let mut checked = 0;
    for file in ["SHA256ShortMsg.rsp", "SHA256LongMsg.rsp"] {
        for record in cavp(file) {
            let bits: usize = record["Len"].parse().unwrap();
            let message = unhex(&record, "Msg");
            let message = &message[..bits / 8];
            assert_eq!(
                hash(HashAlg::Sha256, message),
                unhex(&record, "MD"),
                "{file} Len {bits}"
            );
            checked += 1;
        }
    }
    println!("NIST CAVP SHA-256: {checked} messages");
    assert!(checked >= 128);
}
