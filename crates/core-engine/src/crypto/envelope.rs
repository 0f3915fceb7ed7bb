//! `omnimesh:v<N>:<base64>`: the self-describing form of ciphertexts, signatures and
//! HMAC tags. The version is authenticated: AEAD seals bind [`aad`] (the prefix, then
//! the caller's associated data), so a ciphertext relabelled with another version fails.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::EngineError;

const PREFIX: &str = "omnimesh:v";

/// The string for `body` sealed (or signed) by key version `version`.
pub(crate) fn format(version: u32, body: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(PREFIX.len() + 11 + body.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    let _ = write!(out, "{version}:");
    // Standard alphabet with padding, as `parse` expects; SIMD, so encoding costs less
    // than sealing.
    base64_simd::STANDARD.encode_append(body, &mut out);
    out
}

/// The version and body of `text`; `field` names it in the error.
pub(crate) fn parse(field: &str, text: &str) -> Result<(u32, Vec<u8>), EngineError> {
    let malformed = || EngineError::invalid(field, "expected `omnimesh:v<version>:<base64>`");
    let rest = text.strip_prefix(PREFIX).ok_or_else(malformed)?;
    let (digits, encoded) = rest.split_once(':').ok_or_else(malformed)?;
    // Canonical decimal only: no sign, no leading zero, no overflow.
    if digits.is_empty()
        || digits.len() > 10
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(malformed());
    }
    let version: u32 = digits.parse().map_err(|_| malformed())?;
    if version == 0 {
        return Err(malformed());
    }
    let body = STANDARD
        .decode(encoded)
        .map_err(|_| EngineError::invalid(field, "the part after the version is not base64"))?;
    Ok((version, body))
}

/// The associated data an AEAD binds: the version prefix, then the caller's data. The
/// prefix ends at its second `:`, so the concatenation is unambiguous.
pub(crate) fn aad(version: u32, associated_data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut aad = Vec::with_capacity(PREFIX.len() + 11 + associated_data.len());
    aad.extend_from_slice(PREFIX.as_bytes());
    let _ = write!(aad, "{version}:");
    aad.extend_from_slice(associated_data);
    aad
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let text = format(7, b"\x00\x01hello");
        assert!(text.starts_with("omnimesh:v7:"));
        assert_eq!(parse("c", &text), Ok((7, b"\x00\x01hello".to_vec())));
        for bad in [
            "",
            "omnimesh:v",
            "omnimesh:v:AAAA",
            "omnimesh:v0:AAAA",
            "omnimesh:v01:AAAA",
            "omnimesh:v+1:AAAA",
            "omnimesh:v-1:AAAA",
            "omnimesh:v4294967296:AAAA",
            "omnimesh:v99999999999:AAAA",
            "omnimesh:v1",
            "omnimesh:v1:not base64!",
            "vault:v1:AAAA",
            "OMNIMESH:v1:AAAA",
        ] {
            assert!(
                matches!(parse("c", bad), Err(EngineError::InvalidArgument { .. })),
                "{bad}"
            );
        }
        assert_eq!(parse("c", "omnimesh:v4294967295:"), Ok((u32::MAX, vec![])));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,64}") {
            let _ = parse("c", &text);
        }

        #[test]
        fn format_then_parse_is_identity(version in 1_u32.., body in prop::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(parse("c", &format(version, &body)), Ok((version, body)));
        }
    }
}
