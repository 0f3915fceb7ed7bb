//! The primitives, all from `ring`: AEAD sealing and opening (AES-256-GCM,
//! ChaCha20-Poly1305), signatures (Ed25519, ECDSA P-256 SHA-256 in DER or fixed
//! encoding), HMAC-SHA256, SHA-2 digests, HKDF-SHA256, and the self-describing
//! `omnimesh:v<N>:<base64>` strings. The RPCs and the test-vector suites call the same
//! functions.

pub(crate) mod chunked;
pub(crate) mod envelope;
#[cfg(test)]
mod vectors;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf, hmac, signature};
use zeroize::Zeroizing;

use crate::error::EngineError;

/// AEAD nonce length (96 bits) and tag length (128 bits), for both AEADs.
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// The AEAD of a key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AeadAlg {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlg {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            AeadAlg::Aes256Gcm => &aead::AES_256_GCM,
            AeadAlg::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// An AEAD key ready to seal and open.
pub(crate) struct AeadKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    /// A key from 32 bytes of material.
    pub(crate) fn new(alg: AeadAlg, material: &[u8]) -> Result<Self, EngineError> {
        let unbound = UnboundKey::new(alg.ring(), material)
            .map_err(|_| EngineError::invalid("key", "wrong key length"))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `plaintext` under an explicit nonce, appending `ciphertext || tag` to `out`.
    /// Every seal goes through here (the test vectors too).
    pub(crate) fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let start = out.len();
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| EngineError::Internal)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `buffer` in place under `nonce`; returns the tag. The bulk path (stream
    /// chunks): no allocation, no copy.
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; TAG_LEN], EngineError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buffer)
            .map_err(|_| EngineError::Internal)?;
        let mut out = [0_u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens `ciphertext || tag` sealed under `nonce`, appending the plaintext to `out`
    /// (one copy: `sealed` is copied to the end of `out` and opened there). On failure
    /// `out` is left as it was.
    pub(crate) fn open_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let start = out.len();
        out.extend_from_slice(sealed);
        let opened = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map(|plaintext| plaintext.len());
        settle(opened, out, start)
    }

    /// Opens `nonce || ciphertext || tag` in its own buffer: the plaintext, with no
    /// copy. On failure the buffer is wiped.
    pub(crate) fn open_body(&self, aad: &[u8], mut body: Vec<u8>) -> Result<Vec<u8>, EngineError> {
        let nonce: [u8; NONCE_LEN] = body
            .get(..NONCE_LEN)
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or(EngineError::DecryptionFailed)?;
        let opened = self
            .key
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
                NONCE_LEN..,
            )
            .map(|plaintext| plaintext.len());
        settle(opened, &mut body, 0).map(|()| body)
    }

    /// Opens `ciphertext || tag` sealed under `nonce`.
    pub(crate) fn open_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::with_capacity(sealed.len());
        self.open_into(nonce, aad, sealed, &mut out)?;
        Ok(out)
    }

    /// Seals with a fresh random nonce: `nonce || ciphertext || tag`.
    pub(crate) fn seal(
        &self,
        rng: &SystemRandom,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let nonce = nonces(rng, 1)?[0];
        self.seal_body(nonce, aad, plaintext)
    }

    /// Seals under `nonce` (from [`nonces`]): `nonce || ciphertext || tag`.
    pub(crate) fn seal_body(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let mut body = Vec::new();
        self.seal_body_into(nonce, aad, plaintext, &mut body)?;
        Ok(body)
    }

    /// [`AeadKey::seal_body`] into `out`, which is cleared first (a batch reuses one
    /// buffer).
    pub(crate) fn seal_body_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        out.clear();
        out.reserve(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        self.seal_into(nonce, aad, plaintext, out)
    }

    /// Opens `nonce || ciphertext || tag`.
    pub(crate) fn open(&self, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, EngineError> {
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(EngineError::DecryptionFailed);
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| EngineError::DecryptionFailed)?;
        self.open_with_nonce(nonce, aad, sealed)
    }
}

/// The end of opening `buffer[start..]` in place: `length` bytes of plaintext kept
/// there, or, on failure, that part wiped and dropped (it may hold the text decrypted
/// under the wrong associated data, say).
fn settle(
    opened: Result<usize, ring::error::Unspecified>,
    buffer: &mut Vec<u8>,
    start: usize,
) -> Result<(), EngineError> {
    match opened {
        Ok(length) => {
            buffer.truncate(start + length);
            Ok(())
        }
        Err(_) => {
            zeroize::Zeroize::zeroize(&mut buffer[start..]);
            buffer.truncate(start);
            Err(EngineError::DecryptionFailed)
        }
    }
}

/// `count` random 96-bit nonces from one call to the system generator (one system call
/// per batch rather than per item).
pub(crate) fn nonces(
    rng: &SystemRandom,
    count: usize,
) -> Result<Vec<[u8; NONCE_LEN]>, EngineError> {
    let mut bytes = vec![0_u8; count * NONCE_LEN];
    rng.fill(&mut bytes).map_err(|_| EngineError::Internal)?;
    Ok(bytes
        .chunks_exact(NONCE_LEN)
        .map(|chunk| {
            let mut nonce = [0_u8; NONCE_LEN];
            nonce.copy_from_slice(chunk);
            nonce
        })
        .collect())
}

/// HKDF-SHA256: `length` bytes from `ikm`, `salt` and `info`.
pub(crate) fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    length: usize,
) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let too_long = || EngineError::invalid("length", "HKDF-SHA256 yields at most 8160 bytes");
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, Len(length)).map_err(|_| too_long())?;
    let mut out = Zeroizing::new(vec![0_u8; length]);
    okm.fill(&mut out).map_err(|_| too_long())?;
    Ok(out)
}

/// The salt of derived keys: fixed, so the same context always gives the same key.
const DERIVATION_SALT: &[u8] = b"omnimesh.engine.v1 derived key";

/// The key derived from `material` for a caller `context`.
pub(crate) fn derive(material: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    hkdf_sha256(material, DERIVATION_SALT, context, 32)
}

/// HMAC-SHA256 tag of `message`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

/// Checks an HMAC-SHA256 tag in constant time.
pub(crate) fn verify_hmac_sha256(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), message, tag).is_ok()
}

/// A SHA-2 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

pub(crate) fn hash(alg: HashAlg, input: &[u8]) -> Vec<u8> {
    let alg = match alg {
        HashAlg::Sha256 => &digest::SHA256,
        HashAlg::Sha384 => &digest::SHA384,
        HashAlg::Sha512 => &digest::SHA512,
    };
    digest::digest(alg, input).as_ref().to_vec()
}

/// SHA-256 of the concatenation of `parts`, without concatenating them.
pub(crate) fn sha256_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context.finish().as_ref().to_vec()
}

/// How an ECDSA signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcdsaEncoding {
    Der,
    Fixed,
}

/// A signing key pair.
pub(crate) enum Signer {
    Ed25519(signature::Ed25519KeyPair),
    EcdsaP256 {
        der: Box<signature::EcdsaKeyPair>,
        fixed: Box<signature::EcdsaKeyPair>,
    },
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signer::Ed25519(_) => "Signer::Ed25519(..)",
            Signer::EcdsaP256 { .. } => "Signer::EcdsaP256(..)",
        })
    }
}

impl Signer {
    /// A fresh Ed25519 key pair as its PKCS#8 document.
    pub(crate) fn generate_ed25519(rng: &SystemRandom) -> Result<Zeroizing<Vec<u8>>, EngineError> {
        signature::Ed25519KeyPair::generate_pkcs8(rng)
            .map(|document| Zeroizing::new(document.as_ref().to_vec()))
            .map_err(|_| EngineError::Internal)
    }

    /// A fresh P-256 key pair as its PKCS#8 document.
    pub(crate) fn generate_p256(rng: &SystemRandom) -> Result<Zeroizing<Vec<u8>>, EngineError> {
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, rng)
            .map(|document| Zeroizing::new(document.as_ref().to_vec()))
            .map_err(|_| EngineError::Internal)
    }

    pub(crate) fn ed25519(pkcs8: &[u8]) -> Result<Self, EngineError> {
        signature::Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(Signer::Ed25519)
            .map_err(|_| EngineError::Internal)
    }

    pub(crate) fn p256(pkcs8: &[u8], rng: &SystemRandom) -> Result<Self, EngineError> {
        let pair = |alg| {
            signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, rng)
                .map(Box::new)
                .map_err(|_| EngineError::Internal)
        };
        Ok(Signer::EcdsaP256 {
            der: pair(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)?,
            fixed: pair(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?,
        })
    }

    /// The public key: raw 32 bytes for Ed25519, SEC1 uncompressed for P-256.
    pub(crate) fn public_key(&self) -> Vec<u8> {
        use signature::KeyPair as _;
        match self {
            Signer::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
            Signer::EcdsaP256 { der, .. } => der.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn sign(
        &self,
        rng: &SystemRandom,
        message: &[u8],
        encoding: EcdsaEncoding,
    ) -> Result<Vec<u8>, EngineError> {
        match self {
            Signer::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Signer::EcdsaP256 { der, fixed } => {
                let pair = if encoding == EcdsaEncoding::Der {
                    der
                } else {
                    fixed
                };
                pair.sign(rng, message)
                    .map(|signature| signature.as_ref().to_vec())
                    .map_err(|_| EngineError::Internal)
            }
        }
    }
}

/// Verifies a signature with a public key (raw Ed25519, or SEC1 P-256).
pub(crate) fn verify_ed25519(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

pub(crate) fn verify_p256(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
    encoding: EcdsaEncoding,
) -> bool {
    let alg = match encoding {
        EcdsaEncoding::Der => &signature::ECDSA_P256_SHA256_ASN1,
        EcdsaEncoding::Fixed => &signature::ECDSA_P256_SHA256_FIXED,
    };
    signature::UnparsedPublicKey::new(alg, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Random bytes from the system generator.
pub(crate) fn random(rng: &SystemRandom, length: usize) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let mut bytes = Zeroizing::new(vec![0_u8; length]);
    rng.fill(&mut bytes).map_err(|_| EngineError::Internal)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_opens_in_its_own_buffer_and_anything_else_fails_the_same_way() {
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &[3; 32]).unwrap();
        let body = key.seal_body([9; NONCE_LEN], b"ad", b"hello").unwrap();
        assert_eq!(key.open_body(b"ad", body.clone()).unwrap(), b"hello");
        assert_eq!(key.open(b"ad", &body).unwrap(), b"hello");
        let mut tampered = body.clone();
        tampered[NONCE_LEN] ^= 1;
        let empty = key.seal_body([9; NONCE_LEN], b"", b"").unwrap();
        for (aad, body) in [
            (&b"other"[..], body.clone()),
            (b"ad", tampered),
            (b"ad", body[..NONCE_LEN + TAG_LEN - 1].to_vec()),
            (b"ad", body[..NONCE_LEN - 1].to_vec()),
            (b"ad", Vec::new()),
        ] {
            assert_eq!(key.open_body(aad, body), Err(EngineError::DecryptionFailed));
        }
        assert_eq!(key.open_body(b"", empty).unwrap(), b"");
    }
}
