//! Streaming encryption after c2sp.org/chunked-encryption (Cobblestone): per message a
//! key, base nonce and 32-byte commitment from HKDF-Expand(input key, "c2sp.org/chunked-
//! encryption@v1+" ‖ AEAD name ‖ 0x00 ‖ salt ‖ context); 16 KiB chunks sealed under the
//! base nonce XOR the chunk counter; the final chunk always shorter than 16 KiB (and
//! possibly empty), which authenticates the length: truncation, extension and reordering
//! fail. Memory is one chunk, whatever the message size.

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::{AeadAlg, AeadKey, NONCE_LEN, TAG_LEN};
use crate::error::EngineError;

/// Plaintext bytes per chunk.
pub(crate) const CHUNK: usize = 16 * 1024;
/// Ciphertext bytes of a full chunk.
const SEALED_CHUNK: usize = CHUNK + TAG_LEN;
pub(crate) const SALT_LEN: usize = 24;
pub(crate) const COMMITMENT_LEN: usize = 32;
/// Salt and commitment.
pub(crate) const HEADER_LEN: usize = SALT_LEN + COMMITMENT_LEN;
/// The counter may not reach 2^38.
const MAX_CHUNKS: u64 = 1 << 38;

impl AeadAlg {
    /// The IANA name used in the key derivation.
    fn iana_name(self) -> &'static str {
        match self {
            AeadAlg::Aes256Gcm => "AEAD_AES_256_GCM",
            AeadAlg::ChaCha20Poly1305 => "AEAD_CHACHA20_POLY1305",
        }
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Key, base nonce and commitment for one message.
fn derive(
    alg: AeadAlg,
    input_key: &[u8],
    salt: &[u8; SALT_LEN],
    context: &[u8],
) -> Result<(AeadKey, [u8; NONCE_LEN], [u8; COMMITMENT_LEN]), EngineError> {
    if input_key.len() != 32 {
        return Err(EngineError::invalid(
            "key",
            "the input key must be 32 bytes",
        ));
    }
    let info = [
        b"c2sp.org/chunked-encryption@v1+".as_slice(),
        alg.iana_name().as_bytes(),
        &[0],
        salt,
        context,
    ];
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA512, input_key);
    let mut okm = Zeroizing::new([0_u8; 32 + NONCE_LEN + COMMITMENT_LEN]);
    prk.expand(&info, Len(okm.len()))
        .and_then(|okm_ref| okm_ref.fill(okm.as_mut_slice()))
        .map_err(|_| EngineError::Internal)?;
    let key = AeadKey::new(alg, &okm[..32])?;
    let mut nonce = [0_u8; NONCE_LEN];
    nonce.copy_from_slice(&okm[32..32 + NONCE_LEN]);
    let mut commitment = [0_u8; COMMITMENT_LEN];
    commitment.copy_from_slice(&okm[32 + NONCE_LEN..]);
    Ok((key, nonce, commitment))
}

/// Compares without an early exit, so timing says nothing about where they differ.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn chunk_nonce(base: [u8; NONCE_LEN], counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = base;
    for (byte, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(counter.to_be_bytes()) {
        *byte ^= c;
    }
    nonce
}

/// Encrypts a message pushed in pieces of any size.
pub(crate) struct Encryptor {
    key: AeadKey,
    base_nonce: [u8; NONCE_LEN],
    counter: u64,
    buffer: Vec<u8>,
}

impl Encryptor {
    /// A new message under a fresh random salt; returns the header (salt, commitment).
    pub(crate) fn new(
        alg: AeadAlg,
        input_key: &[u8],
        context: &[u8],
        rng: &SystemRandom,
    ) -> Result<(Self, Vec<u8>), EngineError> {
        let mut salt = [0_u8; SALT_LEN];
        rng.fill(&mut salt).map_err(|_| EngineError::Internal)?;
        Self::with_salt(alg, input_key, context, salt)
    }

    pub(crate) fn with_salt(
        alg: AeadAlg,
        input_key: &[u8],
        context: &[u8],
        salt: [u8; SALT_LEN],
    ) -> Result<(Self, Vec<u8>), EngineError> {
        let (key, base_nonce, commitment) = derive(alg, input_key, &salt, context)?;
        let header = [salt.as_slice(), &commitment].concat();
        Ok((
            Self {
                key,
                base_nonce,
                counter: 0,
                buffer: Vec::with_capacity(CHUNK),
            },
            header,
        ))
    }

    /// The nonce of the next chunk; the counter moves on.
    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], EngineError> {
        if self.counter >= MAX_CHUNKS {
            return Err(EngineError::ResourceExhausted {
                limit: "chunked-encryption message size",
                max: MAX_CHUNKS * CHUNK as u64,
                got: (self.counter + 1) * CHUNK as u64,
            });
        }
        let nonce = chunk_nonce(self.base_nonce, self.counter);
        self.counter += 1;
        Ok(nonce)
    }

    /// Seals the buffered chunk.
    fn seal_buffer(&mut self, out: &mut Vec<u8>) -> Result<(), EngineError> {
        let nonce = self.next_nonce()?;
        self.key.seal_into(nonce, b"", &self.buffer, out)?;
        self.buffer.clear();
        Ok(())
    }

    /// Adds plaintext; returns the ciphertext of every chunk completed. A full chunk is
    /// sealed only once more data follows: the last chunk must be short. Whole chunks
    /// of `data` are sealed from it directly; only a partial chunk is buffered.
    pub(crate) fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::with_capacity(
            self.buffer.len() + data.len() + (self.buffer.len() + data.len()) / CHUNK * TAG_LEN,
        );
        while !data.is_empty() {
            if self.buffer.len() == CHUNK {
                self.seal_buffer(&mut out)?;
            }
            if self.buffer.is_empty() && data.len() > CHUNK {
                let nonce = self.next_nonce()?;
                self.key.seal_into(nonce, b"", &data[..CHUNK], &mut out)?;
                data = &data[CHUNK..];
                continue;
            }
            let take = (CHUNK - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Ends the message: the remaining full chunk (if any), then the short final chunk.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::with_capacity(2 * SEALED_CHUNK);
        if self.buffer.len() == CHUNK {
            self.seal_buffer(&mut out)?;
        }
        self.seal_buffer(&mut out)?;
        Ok(out)
    }
}

/// Decrypts a message pushed in pieces of any size; plaintext is released chunk by
/// chunk once authenticated, so a corrupt stream can yield a valid prefix before its
/// error (as the scheme allows). After an error every call fails.
pub(crate) struct Decryptor {
    alg: AeadAlg,
    input_key: Zeroizing<Vec<u8>>,
    context: Vec<u8>,
    state: State,
    buffer: Vec<u8>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "one per stream, and the large variant is the one in use"
)]
enum State {
    /// Waiting for the 56-byte header.
    Header,
    Chunks {
        key: AeadKey,
        base_nonce: [u8; NONCE_LEN],
        counter: u64,
    },
    Failed,
}

/// Opens the next chunk of a message, `sealed`, appending its plaintext to `out`; false
/// if it does not authenticate or the message has no key yet.
fn open_next(state: &mut State, sealed: &[u8], out: &mut Vec<u8>) -> bool {
    let State::Chunks {
        key,
        base_nonce,
        counter,
    } = state
    else {
        return false;
    };
    if *counter >= MAX_CHUNKS
        || key
            .open_into(chunk_nonce(*base_nonce, *counter), b"", sealed, out)
            .is_err()
    {
        return false;
    }
    *counter += 1;
    true
}

impl Decryptor {
    pub(crate) fn new(alg: AeadAlg, input_key: &[u8], context: &[u8]) -> Result<Self, EngineError> {
        if input_key.len() != 32 {
            return Err(EngineError::invalid(
                "key",
                "the input key must be 32 bytes",
            ));
        }
        Ok(Self {
            alg,
            input_key: Zeroizing::new(input_key.to_vec()),
            context: context.to_vec(),
            state: State::Header,
            buffer: Vec::with_capacity(SEALED_CHUNK),
        })
    }

    fn fail<T>(&mut self) -> Result<T, EngineError> {
        self.state = State::Failed;
        self.buffer.clear();
        Err(EngineError::DecryptionFailed)
    }

    /// Adds ciphertext; returns the plaintext of every chunk authenticated.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, EngineError> {
        if matches!(self.state, State::Failed) {
            return Err(EngineError::DecryptionFailed);
        }
        let mut out = Vec::with_capacity(self.buffer.len() + data.len());
        let mut data = data;
        // Never holds more than a header or one full chunk; whole chunks of `data` are
        // opened straight from it.
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let take = (HEADER_LEN - self.buffer.len()).min(data.len());
                    self.buffer.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buffer.len() < HEADER_LEN {
                        continue;
                    }
                    let mut salt = [0_u8; SALT_LEN];
                    salt.copy_from_slice(&self.buffer[..SALT_LEN]);
                    let derived = derive(self.alg, &self.input_key, &salt, &self.context);
                    let Ok((key, base_nonce, commitment)) = derived else {
                        return self.fail();
                    };
                    if !equal_in_constant_time(&commitment, &self.buffer[SALT_LEN..]) {
                        return self.fail();
                    }
                    self.buffer.clear();
                    self.state = State::Chunks {
                        key,
                        base_nonce,
                        counter: 0,
                    };
                }
                // A full chunk followed by more data is not the final one.
                State::Chunks { .. } if self.buffer.len() == SEALED_CHUNK => {
                    if !open_next(&mut self.state, &self.buffer, &mut out) {
                        return self.fail();
                    }
                    self.buffer.clear();
                }
                State::Chunks { .. } if self.buffer.is_empty() && data.len() > SEALED_CHUNK => {
                    if !open_next(&mut self.state, &data[..SEALED_CHUNK], &mut out) {
                        return self.fail();
                    }
                    data = &data[SEALED_CHUNK..];
                }
                State::Chunks { .. } => {
                    let take = (SEALED_CHUNK - self.buffer.len()).min(data.len());
                    self.buffer.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                State::Failed => return self.fail(),
            }
        }
        Ok(out)
    }

    /// Ends the message: what is left must be a short final chunk.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, EngineError> {
        let final_len = self.buffer.len();
        if !matches!(self.state, State::Chunks { .. })
            || !(TAG_LEN..SEALED_CHUNK).contains(&final_len)
        {
            return self.fail();
        }
        let mut out = Vec::with_capacity(final_len);
        if !open_next(&mut self.state, &self.buffer, &mut out) {
            return self.fail();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use proptest::prelude::*;

    use super::*;

    fn encrypt(key: &[u8], context: &[u8], message: &[u8], piece: usize) -> Vec<u8> {
        let (mut encryptor, mut out) =
            Encryptor::new(AeadAlg::Aes256Gcm, key, context, &SystemRandom::new()).unwrap();
        for part in message.chunks(piece.max(1)) {
            out.extend(encryptor.push(part).unwrap());
        }
        out.extend(encryptor.finish().unwrap());
        out
    }

    fn decrypt(
        key: &[u8],
        context: &[u8],
        ciphertext: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, EngineError> {
        let mut decryptor = Decryptor::new(AeadAlg::Aes256Gcm, key, context)?;
        let mut out = Vec::new();
        for part in ciphertext.chunks(piece.max(1)) {
            out.extend(decryptor.push(part)?);
        }
        out.extend(decryptor.finish()?);
        Ok(out)
    }

    #[test]
    fn chunking_matches_the_specification() {
        let key = [9_u8; 32];
        for (length, chunks) in [
            (0, 1),
            (1024, 1),
            (CHUNK, 2),
            (20 * 1024, 2),
            (3 * CHUNK, 4),
        ] {
            let ciphertext = encrypt(&key, b"", &vec![1; length], 1000);
            assert_eq!(
                ciphertext.len(),
                HEADER_LEN + length + chunks * TAG_LEN,
                "{length}"
            );
            assert_eq!(
                decrypt(&key, b"", &ciphertext, 777).unwrap(),
                vec![1; length]
            );
        }
    }

    #[test]
    fn truncation_extension_reordering_and_context_fail() {
        let key = [3_u8; 32];
        let message: Vec<u8> = (0..3 * CHUNK + 100).map(|i| i as u8).collect();
        let ciphertext = encrypt(&key, b"ctx", &message, 5000);
        let full = HEADER_LEN + SEALED_CHUNK;
        let cases: Vec<Vec<u8>> = vec![
            ciphertext[..ciphertext.len() - 1].to_vec(),
            ciphertext[..HEADER_LEN + 3 * SEALED_CHUNK].to_vec(),
            ciphertext[..HEADER_LEN + SEALED_CHUNK].to_vec(),
            [ciphertext.as_slice(), &[0]].concat(),
            [
                &ciphertext[..full],
                &ciphertext[full..full + SEALED_CHUNK],
                &ciphertext[full..],
            ]
            .concat(),
            [
                &ciphertext[..HEADER_LEN],
                &ciphertext[full..full + SEALED_CHUNK],
                &ciphertext[HEADER_LEN..full],
                &ciphertext[full + SEALED_CHUNK..],
            ]
            .concat(),
            ciphertext[..10].to_vec(),
            Vec::new(),
        ];
        // In pieces smaller than a chunk (buffered) and all at once (opened in place).
        for piece in [4096, usize::MAX] {
            for (index, bad) in cases.iter().enumerate() {
                assert_eq!(
                    decrypt(&key, b"ctx", bad, piece),
                    Err(EngineError::DecryptionFailed),
                    "case {index}, pieces of {piece}"
                );
            }
        }
        assert!(decrypt(&key, b"other", &ciphertext, 4096).is_err());
        assert!(decrypt(&[4; 32], b"ctx", &ciphertext, 4096).is_err());
    }

    #[test]
    fn after_an_error_every_call_fails() {
        let key = [5_u8; 32];
        let mut ciphertext = encrypt(&key, b"", &vec![0; 2 * CHUNK], 4096);
        ciphertext[HEADER_LEN + 10] ^= 1;
        let mut decryptor = Decryptor::new(AeadAlg::Aes256Gcm, &key, b"").unwrap();
        assert!(decryptor.push(&ciphertext).is_err());
        assert!(decryptor.push(b"more").is_err());
        assert!(decryptor.finish().is_err());
    }

    /// Wycheproof's Cobblestone-256 vectors: every valid message decrypts to the stated
    /// length and SHA-512, every invalid one fails; raw mode re-encrypts deterministically.
    #[test]
    fn wycheproof_cobblestone_256() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
            "../../../shared/testvectors/wycheproof/c2sp_chunked_encryption_aes_256_gcm_test.json",
        );
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in file["testGroups"].as_array().unwrap() {
            for test in group["tests"].as_array().unwrap() {
                let hex_field =
                    |name: &str| hex::decode(test[name].as_str().unwrap_or("")).unwrap();
                let mut ct = Vec::new();
                flate2::read::ZlibDecoder::new(hex_field("ct").as_slice())
                    .read_to_end(&mut ct)
                    .unwrap();
                let (key, ctx) = (hex_field("key"), hex_field("ctx"));
                let result = decrypt(&key, &ctx, &ct, 7000);
                // All at once too: whole chunks are then opened straight from the input.
                let at_once = decrypt(&key, &ctx, &ct, usize::MAX);
                assert_eq!(result, at_once, "tcId {}", test["tcId"]);
                if test["result"] == "valid" {
                    let message = result.unwrap_or_else(|e| panic!("tcId {}: {e}", test["tcId"]));
                    assert_eq!(message.len() as u64, test["msgLength"].as_u64().unwrap());
                    let digest = crate::crypto::hash(crate::crypto::HashAlg::Sha512, &message);
                    assert_eq!(hex::encode(digest), test["msgSha512"].as_str().unwrap());
                    // Raw mode: the same key and base nonce give the same chunks.
                    let salt: [u8; SALT_LEN] = ct[..SALT_LEN].try_into().unwrap();
                    let (mut encryptor, header) =
                        Encryptor::with_salt(AeadAlg::Aes256Gcm, &key, &ctx, salt).unwrap();
                    assert_eq!(header, ct[..HEADER_LEN]);
                    let mut again = header;
                    again.extend(encryptor.push(&message).unwrap());
                    again.extend(encryptor.finish().unwrap());
                    assert_eq!(again, ct, "tcId {}", test["tcId"]);
                    valid += 1;
                } else {
                    assert!(
                        result.is_err(),
                        "tcId {} ({}) must fail",
                        test["tcId"],
                        test["comment"]
                    );
                    invalid += 1;
                }
            }
        }
        println!("Wycheproof Cobblestone-256: {valid} valid decrypted, {invalid} invalid rejected");
        assert_eq!(
            valid + invalid,
            file["numberOfTests"].as_u64().unwrap() as usize
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn any_message_in_any_pieces_round_trips(
            length in 0_usize..70_000,
            push in 1_usize..40_000,
            pull in 1_usize..40_000,
        ) {
            let key = [7_u8; 32];
            let message: Vec<u8> = (0..length).map(|i| (i * 31) as u8).collect();
            let ciphertext = encrypt(&key, b"c", &message, push);
            prop_assert_eq!(decrypt(&key, b"c", &ciphertext, pull).unwrap(), message);
        }
    }
}
