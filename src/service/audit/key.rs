//! The service's Ed25519 audit key: it signs checkpoints, and its public half is what a kept
//! checkpoint is verified against. In development it is created under the data folder on first
//! run, like the token key.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::domain::checkpoint::Checkpoint;

/// A checkpoint with its signature, as an auditor keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// Hex of the Ed25519 public key, and its id (first 8 bytes of its SHA-256, hex).
    pub public_key: String,
    pub key_id: String,
    /// Hex of the Ed25519 signature over [`Checkpoint::statement`].
    pub signature: String,
}

/// Why a kept checkpoint cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the checkpoint was signed by key {found}, not by this service's key {expected}")]
    OtherKey { expected: String, found: String },
    #[error("the checkpoint's signature does not verify: it was altered or is not ours")]
    Invalid,
}

/// The verifying half: all an offline verifier needs.
#[derive(Debug, Clone)]
pub struct AuditPublicKey(VerifyingKey);

impl AuditPublicKey {
    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("an Ed25519 public key is 64 hex digits")?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `signed` was signed with this key, over exactly its statement.
    pub fn verify(&self, signed: &SignedCheckpoint) -> Result<(), SignatureError> {
        if signed.public_key != self.hex() {
            return Err(SignatureError::OtherKey {
                expected: self.key_id(),
                found: signed.key_id.clone(),
            });
        }
        let signature: [u8; 64] = hex::decode(&signed.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureError::Invalid)?;
        self.0
            .verify(
                signed.checkpoint.statement().as_bytes(),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| SignatureError::Invalid)
    }
}

/// The signing key. Its secret never leaves this type (no Debug, no accessor).
pub struct AuditKey(SigningKey);

impl AuditKey {
    /// From a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads the key (64 hex digits of its seed) from `path`, creating it (owner-only) if it
    /// does not exist; whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), String> {
        if path.exists() {
            return Self::load(path).map(|key| (key, false));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("random: {e}"))?;
        crate::config::write_private(path, &hex::encode(seed))?;
        Ok((Self::from_seed(seed), true))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "{}: expected 64 hex digits (an Ed25519 seed)",
                    path.display()
                )
            })?;
        Ok(Self::from_seed(seed))
    }

    pub fn public(&self) -> AuditPublicKey {
        AuditPublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let public = self.public();
        let signature = self.0.sign(checkpoint.statement().as_bytes());
        SignedCheckpoint {
            checkpoint,
            public_key: public.hex(),
            key_id: public.key_id(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            seq: 42,
            at: Timestamp::from_second(1_800_000_000).unwrap(),
            chains: 3,
            digest: "ab".repeat(32),
        }
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_does_not() {
        let key = AuditKey::from_seed([7; 32]);
        let signed = key.sign(checkpoint());
        assert_eq!(key.public().verify(&signed), Ok(()));

        let mut moved = signed.clone();
        moved.checkpoint.seq = 41;
        assert_eq!(key.public().verify(&moved), Err(SignatureError::Invalid));
        let mut redigested = signed.clone();
        redigested.checkpoint.digest = "cd".repeat(32);
        assert_eq!(
            key.public().verify(&redigested),
            Err(SignatureError::Invalid)
        );

        let other = AuditKey::from_seed([8; 32]).sign(checkpoint());
        assert!(matches!(
            key.public().verify(&other),
            Err(SignatureError::OtherKey { .. })
        ));
    }
}
