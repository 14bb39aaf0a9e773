//! Audit checkpoints (DESIGN §6): a digest over every chain's head as of one append position,
//! stated with the time and signed. A checkpoint an auditor keeps outside the service proves
//! later that the trail still extends it: a chain rewritten wholesale, head and all, no longer
//! has the hash it had at that position, so the digest recomputed from the trail differs.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// Domain separation of the digest and of the signed statement.
const DIGEST_TAG: &[u8] = b"withholding.audit.heads.v1";
const STATEMENT_TAG: &str = "withholding.audit.checkpoint.v1";

/// What a checkpoint states: the chain heads as of append position `seq` digest to `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every event with a seq at or below this one is covered (and none can still appear).
    pub seq: i64,
    pub at: Timestamp,
    pub chains: i64,
    /// SHA-256 (hex) of the heads, see [`HeadsDigest`].
    pub digest: String,
}

impl Checkpoint {
    /// The exact bytes that are signed: every field, in a fixed text form.
    pub fn statement(&self) -> String {
        format!(
            "{STATEMENT_TAG}\nseq={}\nat_us={}\nchains={}\ndigest={}\n",
            self.seq,
            self.at.as_microsecond(),
            self.chains,
            self.digest
        )
    }
}

/// SHA-256 over the heads (chain id, last position, last hash) of every chain, fed in chain
/// order: the digest of any number of chains in constant memory.
pub struct HeadsDigest {
    hash: Sha256,
    chains: i64,
    last_chain: Option<String>,
}

impl HeadsDigest {
    pub fn new(seq: i64) -> Self {
        let mut hash = Sha256::new();
        hash.update(DIGEST_TAG);
        hash.update(seq.to_be_bytes());
        Self {
            hash,
            chains: 0,
            last_chain: None,
        }
    }

    /// Adds the next chain's head; chains must come in strictly increasing id order, so one
    /// set of heads has one digest.
    pub fn push(&mut self, chain_id: &str, position: i64, hash: &str) -> Result<(), String> {
        if self
            .last_chain
            .as_deref()
            .is_some_and(|last| last >= chain_id)
        {
            return Err(format!("chain {chain_id} out of order"));
        }
        for field in [chain_id, hash] {
            let len = u32::try_from(field.len()).map_err(|_| "field too long".to_owned())?;
            self.hash.update(len.to_be_bytes());
            self.hash.update(field.as_bytes());
        }
        self.hash.update(position.to_be_bytes());
        self.chains += 1;
        self.last_chain = Some(chain_id.to_owned());
        Ok(())
    }

    pub fn chains(&self) -> i64 {
        self.chains
    }

    /// The digest (hex) and the number of chains it covers.
    pub fn finish(self) -> (String, i64) {
        (hex::encode(self.hash.finalize()), self.chains)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(heads: &[(&str, i64, &str)]) -> String {
        let mut d = HeadsDigest::new(10);
        for (chain, position, hash) in heads {
            d.push(chain, *position, hash).unwrap();
        }
        d.finish().0
    }

    #[test]
    fn any_change_to_a_head_changes_the_digest() {
        let base = [("a", 3, "h1"), ("b", 1, "h2")];
        let d = digest(&base);
        assert_ne!(d, digest(&[("a", 3, "h1"), ("b", 1, "h3")]));
        assert_ne!(d, digest(&[("a", 2, "h1"), ("b", 1, "h2")]));
        assert_ne!(d, digest(&[("a", 3, "h1")]));
        assert_ne!(d, digest(&[("a", 3, "h1"), ("b", 1, "h2"), ("c", 1, "h")]));
        // Field boundaries are part of the encoding.
        assert_ne!(digest(&[("ab", 1, "c")]), digest(&[("a", 1, "bc")]));
        assert_eq!(d, digest(&base));
    }

    #[test]
    fn heads_out_of_order_are_refused() {
        let mut d = HeadsDigest::new(1);
        d.push("b", 1, "h").unwrap();
        assert!(d.push("a", 1, "h").is_err());
        assert!(d.push("b", 2, "h").is_err());
    }
}
