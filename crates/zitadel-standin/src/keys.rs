//! Service users' JWT-profile keys: generated here as ZITADEL does (RSA 2048, the private half handed out once
//! as a PKCS#1 PEM in a JSON key file, the public half kept to verify assertions).

use base64::Engine as _;

/// A freshly generated RSA key.
pub struct GeneratedKey {
    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1), as in ZITADEL's key files.
    pub private_pem: String,
    /// The public key as a DER `RSAPublicKey` (PKCS#1).
    pub public_der: Vec<u8>,
}

/// Generates an RSA 2048 key pair.
///
/// # Panics
/// When the system's randomness fails (a test helper).
pub fn generate_rsa_key() -> GeneratedKey {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;

    let pair = KeyPair::generate(KeySize::Rsa2048).expect("stand-in: RSA key generation");
    let pkcs8 = pair.as_der().expect("stand-in: PKCS#8 export");
    let pkcs1 = pkcs1_of_pkcs8(pkcs8.as_ref()).expect("stand-in: a PKCS#8 RSA key");
    GeneratedKey {
        private_pem: pem("RSA PRIVATE KEY", pkcs1),
        public_der: pair.public_key().as_ref().to_vec(),
    }
}

/// PEM armour with 64-character lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: SEQUENCE { version, algorithm, OCTET STRING key }.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<&[u8]> {
    let (tag, info, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_version, _, rest) = der_element(info)?;
    let (_algorithm, _, rest) = der_element(rest)?;
    let (tag, key, _) = der_element(rest)?;
    (tag == 0x04).then_some(key)
}

/// `(modulus, exponent)` of a DER `RSAPublicKey` (SEQUENCE { INTEGER n, INTEGER e }), without the sign byte.
pub(super) fn rsa_public_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (tag, sequence, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag_n, n, rest) = der_element(sequence)?;
    let (tag_e, e, _) = der_element(rest)?;
    if tag_n != 0x02 || tag_e != 0x02 {
        return None;
    }
    let n = n.strip_prefix(&[0u8]).unwrap_or(n);
    let e = e.strip_prefix(&[0u8]).unwrap_or(e);
    Some((n, e))
}

/// One DER element: `(tag, content, rest)`.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, tail) = rest.split_at(count);
        rest = tail;
        bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
