//! `omnimesh:v<N>:<base64>`: the self-describing form of ciphertexts, signatures and
//! HMAC tags. The version is authenticated: AEAD seals bind [`aad`] (the prefix, then
//! the caller's associated data), so a ciphertext relabelled with another version fails.

use crate::error::EngineError;

const PREFIX: &str = "omnimesh:v";

/// The string for `body` sealed (or signed) by key version `version`.
pub(crate) fn format(version: u32, body: &[u8]) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version);
    let mut out =
        String::with_capacity(PREFIX.len() + digits.len() + 1 + body.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    out.push_str(digits);
    out.push(':');
    // Standard alphabet with padding, as `parse` expects; SIMD, so encoding costs less
    // than sealing.
    base64_simd::STANDARD.encode_append(body, &mut out);
    out
}

/// The version and body of `text`; `field` names it in the error (written only then).
pub(crate) fn parse(
    field: impl std::fmt::Display,
    text: &str,
) -> Result<(u32, Vec<u8>), EngineError> {
    let malformed =
        || EngineError::invalid(field.to_string(), "expected `omnimesh:v<version>:<base64>`");
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
    // Strict: padding required, no other characters, the unused bits of the last
    // character zero (a test holds it to the `base64` crate's strict decoding).
    let body = base64_simd::STANDARD.decode_to_vec(encoded).map_err(|_| {
        EngineError::invalid(
            field.to_string(),
            "the part after the version is not base64",
        )
    })?;
    Ok((version, body))
}

/// The associated data an AEAD binds: the version prefix, then the caller's data. The
/// prefix ends at its second `:`, so the concatenation is unambiguous.
pub(crate) fn aad(version: u32, associated_data: &[u8]) -> Vec<u8> {
    let mut aad = Vec::new();
    aad_into(version, associated_data, &mut aad);
    aad
}

/// [`aad`] written into `out`, which is cleared first (a batch reuses one buffer).
pub(crate) fn aad_into(version: u32, associated_data: &[u8], out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version);
    out.clear();
    out.reserve(PREFIX.len() + digits.len() + 1 + associated_data.len());
    out.extend_from_slice(PREFIX.as_bytes());
    out.extend_from_slice(digits.as_bytes());
    out.push(b':');
    out.extend_from_slice(associated_data);
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
            // Not canonical: unused bits set, padding missing, extra or misplaced, other
            // alphabets, whitespace.
            "omnimesh:v1:AB==",
            "omnimesh:v1:AAB=",
            "omnimesh:v1:AA",
            "omnimesh:v1:AAA",
            "omnimesh:v1:AA===",
            "omnimesh:v1:A===",
            "omnimesh:v1:AA=A",
            "omnimesh:v1:=AAA",
            "omnimesh:v1:AA-_",
            "omnimesh:v1:AA A",
            "omnimesh:v1:AAAA\n",
        ] {
            assert!(
                matches!(parse("c", bad), Err(EngineError::InvalidArgument { .. })),
                "{bad}"
            );
        }
        assert_eq!(parse("c", "omnimesh:v4294967295:"), Ok((u32::MAX, vec![])));
        // The field is named in the error, written only then.
        assert_eq!(
            parse(format_args!("items[{}].ciphertext", 3), "x"),
            Err(EngineError::invalid(
                "items[3].ciphertext",
                "expected `omnimesh:v<version>:<base64>`"
            ))
        );
    }

    #[test]
    fn the_prefix_is_the_decimal_version_and_the_buffer_is_reused() {
        assert_eq!(format(1, b""), "omnimesh:v1:");
        assert_eq!(format(u32::MAX, b"\xff"), "omnimesh:v4294967295:/w==");
        let mut out = b"left over from the item before".to_vec();
        aad_into(10, b"ad", &mut out);
        assert_eq!(out, b"omnimesh:v10:ad");
        aad_into(9, b"", &mut out);
        assert_eq!(out, b"omnimesh:v9:");
        assert_eq!(aad(4_000_000_000, b"x"), b"omnimesh:v4000000000:x");
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

        #[test]
        fn decoding_is_as_strict_as_the_base64_crate(
            encoded in "[A-Za-z0-9+/=\\-_ \n.]{0,16}",
            body in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            use base64::Engine as _;
            let strict = base64::engine::general_purpose::STANDARD;
            for encoded in [encoded, strict.encode(&body)] {
                let ours = parse("c", &std::format!("omnimesh:v1:{encoded}")).map(|(_, body)| body);
                prop_assert_eq!(ours.ok(), strict.decode(&encoded).ok(), "{}", encoded);
            }
        }

        #[test]
        fn the_prefixes_are_what_core_fmt_writes(version in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..32)) {
            let prefix = std::format!("omnimesh:v{version}:");
            prop_assert!(format(version, &data).starts_with(&prefix));
            let mut expected = prefix.into_bytes();
            expected.extend_from_slice(&data);
            prop_assert_eq!(aad(version, &data), expected);
        }
    }
}
