//! The master key: wraps every key version's material before it is stored.
//!
//! Loaded from an environment variable (base64 or hex of 32 bytes) or a file (32 raw
//! bytes, or base64/hex text); for the local default the file is generated at first start
//! with mode 0600. The key is never logged; only its id (a digest) is recorded with each
//! wrapped version, so a rotated master key can be told apart.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::crypto::{self, AeadAlg, AeadKey};
use crate::error::EngineError;

/// The wrapping key.
pub(crate) struct MasterKey {
    key: AeadKey,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// 32 bytes from raw bytes, or base64 / hex text.
fn decode(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if bytes.len() == 32 {
        return Some(Zeroizing::new(bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    };
    let decoded = Zeroizing::new(decoded);
    (decoded.len() == 32).then_some(decoded)
}

impl MasterKey {
    /// A master key from 32 bytes.
    pub(crate) fn from_bytes(material: &[u8]) -> Result<Self, String> {
        let material = decode(material).ok_or("must be 32 bytes (raw), or their base64 or hex")?;
        let digest = crypto::hash(
            crypto::HashAlg::Sha256,
            &[b"omnimesh master key id:".as_slice(), &material].concat(),
        );
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let key = AeadKey::new(AeadAlg::Aes256Gcm, &material).map_err(|e| e.to_string())?;
        Ok(Self { key, id })
    }

    /// Loads the key: from `env_value` when given, else from `file`, generating the file
    /// (0600) when it is missing and `generate` is set.
    pub(crate) fn load(
        env_value: Option<&str>,
        file: &Path,
        generate: bool,
        rng: &SystemRandom,
    ) -> Result<Self, String> {
        if let Some(value) = env_value {
            return Self::from_bytes(value.as_bytes())
                .map_err(|reason| format!("the master key variable: {reason}"));
        }
        if !generate {
            let bytes = Zeroizing::new(
                std::fs::read(file)
                    .map_err(|error| format!("reading {}: {error}", file.display()))?,
            );
            return Self::from_bytes(&bytes)
                .map_err(|reason| format!("{}: {reason}", file.display()));
        }
        let (bytes, created) = omnimesh_common::files::read_or_create_private(file, || {
            // Moved out, not copied: the Zeroizing wrapper is left holding an empty vector.
            crypto::random(rng, 32)
                .map(|mut material| std::mem::take(&mut *material))
                .map_err(|error| std::io::Error::other(error.to_string()))
        })
        .map_err(|error| format!("reading or creating {}: {error}", file.display()))?;
        let bytes = Zeroizing::new(bytes);
        if created {
            tracing::info!(path = %file.display(), "generated a new master key");
        }
        Self::from_bytes(&bytes).map_err(|reason| format!("{}: {reason}", file.display()))
    }

    /// Retired master keys that may still wrap stored versions, from `file`: one key per
    /// line (base64 or hex of 32 bytes; blank lines and `#` comments skipped), or 32 raw
    /// bytes for a single key. No key may be `current`, nor appear twice.
    pub(crate) fn load_previous(file: &Path, current: &Self) -> Result<Vec<Self>, String> {
        /// Far more than any list of retired keys; a larger file is a mistake.
        const MAX_FILE_BYTES: u64 = 64 * 1024;
        use std::io::Read as _;
        let named = |reason: String| format!("{}: {reason}", file.display());
        // Read up to one byte over the cap, so a file that grows meanwhile is caught too,
        // into room for all of it (no reallocation leaves a copy of a key behind).
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_FILE_BYTES as usize + 1));
        std::fs::File::open(file)
            .and_then(|opened| opened.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|error| named(error.to_string()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(named(format!(
                "more than the {MAX_FILE_BYTES} bytes a list of keys may take"
            )));
        }
        Self::parse_previous(&bytes, current).map_err(named)
    }

    /// A list of retired master keys (see [`MasterKey::load_previous`]); errors name the
    /// line, never its content.
    pub(crate) fn parse_previous(bytes: &[u8], current: &Self) -> Result<Vec<Self>, String> {
        // 32 bytes cannot be a key in text (base64 takes 44 characters, hex 64).
        let keys = if bytes.len() == 32 {
            vec![Self::from_bytes(bytes)?]
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "not text: one base64 or hex key per line".to_owned())?;
            text.lines()
                .enumerate()
                .map(|(index, line)| (index + 1, line.trim()))
                .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
                .map(|(number, line)| {
                    // A raw 32-byte line is not a key in text: only base64 or hex.
                    if line.len() == 32 {
                        return Err(format!("line {number}: not base64 or hex of 32 bytes"));
                    }
                    Self::from_bytes(line.as_bytes())
                        .map_err(|reason| format!("line {number}: {reason}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut seen = std::collections::HashSet::from([current.id()]);
        for key in &keys {
            if !seen.insert(key.id()) {
                return Err(if key.id() == current.id() {
                    format!("lists the master key itself ({})", key.id())
                } else {
                    format!("lists master key {} twice", key.id())
                });
            }
        }
        Ok(keys)
    }

    /// The key's id (a digest prefix, safe to store and log).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// What binds a wrapped blob to its key and version, so blobs cannot be swapped.
    fn aad(name: &str, version: u32) -> Vec<u8> {
        format!("omnimesh key {name} v{version}").into_bytes()
    }

    pub(crate) fn wrap(
        &self,
        rng: &SystemRandom,
        name: &str,
        version: u32,
        secret: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        self.key.seal(rng, &Self::aad(name, version), secret)
    }

    pub(crate) fn unwrap(
        &self,
        name: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EngineError> {
        self.key
            .open(&Self::aad(name, version), wrapped)
            .map(Zeroizing::new)
            .map_err(|_| {
                tracing::error!(key = name, version, "a stored key version does not unwrap");
                EngineError::Internal
            })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn replicas_generating_at_once_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.key");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        MasterKey::load(None, &file, true, &SystemRandom::new())
                            .unwrap()
                            .id()
                            .to_owned()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "{ids:?}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left");
    }

    #[test]
    fn generated_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested").join("master.key");
        let rng = SystemRandom::new();
        let first = MasterKey::load(None, &file, true, &rng).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = MasterKey::load(None, &file, true, &rng).unwrap();
        assert_eq!(first.id(), again.id());
        let wrapped = first.wrap(&rng, "k", 1, b"secret").unwrap();
        assert_eq!(
            again.unwrap("k", 1, &wrapped).unwrap().as_slice(),
            b"secret"
        );
        // Bound to the key and version.
        assert!(again.unwrap("k", 2, &wrapped).is_err());
        assert!(again.unwrap("other", 1, &wrapped).is_err());
    }

    #[test]
    fn formats_and_errors() {
        let rng = SystemRandom::new();
        let hex = "00".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0_u8; 32]);
        let a = MasterKey::load(Some(&hex), Path::new("/nonexistent"), false, &rng).unwrap();
        let b = MasterKey::load(Some(&b64), Path::new("/nonexistent"), false, &rng).unwrap();
        assert_eq!(a.id(), b.id());
        assert!(MasterKey::load(Some("short"), Path::new("/x"), false, &rng).is_err());
        let missing = MasterKey::load(None, Path::new("/nonexistent/key"), false, &rng);
        assert!(missing.unwrap_err().contains("/nonexistent/key"));
        // The id is not the key.
        assert!(!format!("{a:?}").contains(&hex));
    }

    #[test]
    fn retired_keys_are_listed_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("previous");
        let current = MasterKey::from_bytes(&[9; 32]).unwrap();
        let (one, two) = ([1_u8; 32], [2_u8; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(one);
        let hex: String = two.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&file, format!("# retired 2026-11\n{b64}\n\n  {hex}  \n")).unwrap();
        let ids: Vec<String> = MasterKey::load_previous(&file, &current)
            .unwrap()
            .iter()
            .map(|key| key.id().to_owned())
            .collect();
        let expected =
            [one, two].map(|bytes| MasterKey::from_bytes(&bytes).unwrap().id().to_owned());
        assert_eq!(ids, expected);
        // A single key as 32 raw bytes, as the master key file may hold it.
        std::fs::write(&file, one).unwrap();
        assert_eq!(
            MasterKey::load_previous(&file, &current).unwrap()[0].id(),
            expected[0]
        );
        // An empty list is no list.
        std::fs::write(&file, "# none yet\n").unwrap();
        assert!(
            MasterKey::load_previous(&file, &current)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_bad_list_of_retired_keys_names_the_line_and_shows_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("previous");
        let current = MasterKey::from_bytes(&[9; 32]).unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let secret = b64(&[3; 31]);
        let refused = |content: &[u8]| {
            std::fs::write(&file, content).unwrap();
            MasterKey::load_previous(&file, &current).unwrap_err()
        };
        // Malformed: a short key, a 32-character line (not base64 or hex of 32 bytes), not text.
        let short = refused(format!("{}\n{secret}\n", b64(&[1; 32])).as_bytes());
        assert!(
            short.contains("line 2") && short.contains("32 bytes"),
            "{short}"
        );
        assert!(!short.contains(&secret), "the line is not echoed: {short}");
        let raw_line = refused(format!("{}\n", "a".repeat(32)).as_bytes());
        assert!(raw_line.contains("line 1"), "{raw_line}");
        let binary = refused(&[0xff; 40]);
        assert!(binary.contains("not text"), "{binary}");
        // Hostile or mistaken: the master key itself, a key twice, a huge file, a missing one.
        let itself = refused(format!("{}\n", b64(&[9; 32])).as_bytes());
        assert!(itself.contains("the master key itself"), "{itself}");
        let twice = refused(format!("{0}\n{0}\n", b64(&[1; 32])).as_bytes());
        assert!(twice.contains("twice"), "{twice}");
        let huge = refused(&vec![b'#'; 1 << 20]);
        assert!(huge.contains("more than the 65536"), "{huge}");
        let missing = MasterKey::load_previous(&dir.path().join("nope"), &current).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        // Each message names the file.
        for message in [short, raw_line, binary, itself, twice, huge] {
            assert!(
                message.starts_with(&file.display().to_string()),
                "{message}"
            );
        }
    }
}
