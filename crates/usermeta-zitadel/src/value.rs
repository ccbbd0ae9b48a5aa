//! The two base64 flavours ZITADEL uses for metadata values.
//!
//! The REST APIs (grpc-gateway, proto3 JSON) send `bytes` as padded standard base64; the userinfo and
//! introspection claim `urn:zitadel:iam:user:metadata` uses URL-safe base64 without padding. Decoding accepts
//! either alphabet, padded or not, so a value decodes whichever endpoint it came from.

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Encodes a value the way ZITADEL's REST APIs expect `bytes`: standard alphabet, padded.
pub fn encode(value: &[u8]) -> String {
    STANDARD.encode(value)
}

/// Decodes a value in either base64 flavour, padded or not.
pub fn decode(encoded: &str) -> Result<Vec<u8>, base64::DecodeError> {
    // Only the URL-safe alphabet has '-' and '_'; anything else is tried as standard first.
    if encoded.contains(['-', '_']) {
        URL_SAFE_LENIENT.decode(encoded)
    } else {
        STANDARD_LENIENT.decode(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_flavours_padded_or_not() {
        assert_eq!(decode("MTIzNA==").unwrap(), b"1234");
        assert_eq!(decode("MTIzNA").unwrap(), b"1234");
        // 0xfb 0xff encodes to "+/8=" in standard and "-_8" in URL-safe.
        assert_eq!(decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("-_8=").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn rejects_what_is_not_base64() {
        assert!(decode("not base64!").is_err());
        assert!(
            decode("+_8=").is_err(),
            "mixed alphabets are not a value ZITADEL sends"
        );
    }

    #[test]
    fn encodes_padded_standard() {
        assert_eq!(encode(b"1234"), "MTIzNA==");
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }
}
