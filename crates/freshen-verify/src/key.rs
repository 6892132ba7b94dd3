//! Public keys as cosign writes them (`cosign.pub`: a PEM `PUBLIC KEY`,
//! SubjectPublicKeyInfo DER) and signature checks with them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

use crate::Error;

/// PEM text a key may have, at most.
pub const MAX_PEM: usize = 16 * 1024;

/// A public key an authority trusts.
#[derive(Clone)]
pub struct PublicKey {
    kind: Kind,
    /// The SubjectPublicKeyInfo DER, for its fingerprint.
    der: Vec<u8>,
}

#[derive(Clone)]
enum Kind {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(rsa::PublicKey),
}

/// RSA moduli accepted, in bits: 2048 (the least cosign generates with
/// `--key`) to 4096 (a larger one costs a verifier more than it protects).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.algorithm(), self.hint())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (ECDSA P-256 or P-384, Ed25519, RSA); the error
    /// says what was found instead.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        if pem.len() > MAX_PEM {
            return Err(Error::Key(format!(
                "{} bytes of PEM; a public key has at most {MAX_PEM}",
                pem.len()
            )));
        }
        let der = pem_body(pem, "PUBLIC KEY")?;
        Self::from_der(&der)
    }

    /// Reads SubjectPublicKeyInfo DER.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        use p256::pkcs8::DecodePublicKey as _;
        let kind = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            Kind::P256(k)
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            Kind::P384(k)
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            Kind::Ed25519(k)
        } else if let Ok(k) = rsa::PublicKey::from_public_key_der(der) {
            use rsa::traits::PublicKeyParts as _;
            let bits = k.size() * 8;
            if !RSA_BITS.contains(&bits) {
                return Err(Error::Key(format!(
                    "an RSA key of {bits} bits; expected 2048 to 4096"
                )));
            }
            Kind::Rsa(k)
        } else {
            return Err(Error::Key(
                "not an ECDSA P-256 or P-384, Ed25519 or RSA public key".into(),
            ));
        };
        Ok(Self {
            kind,
            der: der.to_vec(),
        })
    }

    /// `ecdsa-p256`, `ecdsa-p384` or `ed25519`.
    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            Kind::P256(_) => "ecdsa-p256",
            Kind::P384(_) => "ecdsa-p384",
            Kind::Ed25519(_) => "ed25519",
            Kind::Rsa(_) => "rsa",
        }
    }

    /// The base64 SHA-256 of the key's DER: what a bundle's
    /// `verificationMaterial.publicKey.hint` names (unauthenticated, used
    /// only to tell a tampered signature from another signer's).
    pub fn hint(&self) -> String {
        STANDARD.encode(sha2::Sha256::digest(&self.der))
    }

    /// Whether `signature` (DER for ECDSA, 64 bytes for Ed25519, the
    /// modulus' length for RSA) signs `message` with this key (ECDSA over
    /// its curve's SHA-2: SHA-256 for P-256, SHA-384 for P-384; RSA
    /// PKCS#1 v1.5 or PSS over SHA-256, as cosign signs with RSA keys).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match &self.kind {
            Kind::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            Kind::P384(key) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            Kind::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| key.verify_strict(message, &s).is_ok()),
            Kind::Rsa(key) => {
                let digest = sha2::Sha256::digest(message);
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature)
                    .is_ok()
                    || key
                        .verify(rsa::Pss::<sha2::Sha256>::new(), &digest, signature)
                        .is_ok()
            }
        }
    }
}

/// The base64 body of the one PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Result<Vec<u8>, Error> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = pem.find(&begin) else {
        let found = pem
            .lines()
            .find(|l| l.starts_with("-----BEGIN "))
            .unwrap_or("no PEM block");
        return Err(Error::Key(format!(
            "expected a PEM {begin} block (cosign.pub), found {:?}",
            found.chars().take(64).collect::<String>()
        )));
    };
    let body = &pem[start + begin.len()..];
    let Some(stop) = body.find(&end) else {
        return Err(Error::Key(format!("the PEM block has no {end}")));
    };
    let text: String = body[..stop].split_whitespace().collect();
    STANDARD
        .decode(text)
        .map_err(|e| Error::Key(format!("the PEM body is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_key_says_what_it_is() {
        let e = PublicKey::from_pem("hello").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("expected a PEM")));
        let private = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n";
        let e = PublicKey::from_pem(private).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("ENCRYPTED SIGSTORE PRIVATE KEY")),
            "{e:?}"
        );
        let junk = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(junk).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not an ECDSA")));
        // RSA below 2048 bits is refused, by size (`openssl genrsa 1024`).
        let small = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDMT5mHyWJg5H17msi6VYlzAAvR\no6WFzf9h7RTVzIRcrHLYoG3/BIRk5/RE48Yfmz9pdC/xDMJMgTdVm9y51CX02VM/\n9IGMkgnUAt0xRxGIu0cYa4AdhI+fE02W7dRNDIxm+UNmYEjFQO9weU9zb67vsHon\n0N70IjW8vIBruMtmdwIDAQAB\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(small).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("an RSA key of 1024 bits; expected 2048 to 4096")
        );
        let huge = "x".repeat(MAX_PEM + 1);
        assert!(PublicKey::from_pem(&huge).is_err());
    }
}
