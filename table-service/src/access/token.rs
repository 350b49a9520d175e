//! Bearer tokens: `ut_<id>_<secret>`, where `id` (12 hex digits) names the token in the store
//! and in audit lines, and `secret` is 32 random bytes (64 hex digits) from the OS generator.
//!
//! Only `sha256(salt || secret)` is stored, with a random 16-byte salt per token. A fast hash
//! is enough here: the secret has 256 bits of entropy, so the hash cannot be brute-forced the
//! way a password hash can, and checking a token on every RPC must stay cheap. The salt keeps
//! equal secrets (which do not happen) and precomputed tables (which do not help) out of the
//! picture all the same. Comparison is constant-time.

use sha2::{Digest, Sha256};

const PREFIX: &str = "ut_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
const SALT_BYTES: usize = 16;

/// A freshly generated token: the secret text for the user, and what the store keeps.
#[derive(Debug)]
pub(crate) struct NewToken {
    pub(crate) token: String,
    pub(crate) stored: StoredSecret,
}

/// What the store keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSecret {
    pub(crate) id: String,
    /// Hex.
    pub(crate) salt: String,
    /// Hex of sha256(salt || secret).
    pub(crate) hash: String,
}

/// A token split into its parts (not yet checked).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Presented<'a> {
    pub(crate) id: &'a str,
    pub(crate) secret: &'a str,
}

fn random(n: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| format!("the operating system's random generator failed: {e}"))?;
    Ok(bytes)
}

fn digest(salt: &[u8], secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Generates a token.
pub(crate) fn generate() -> Result<NewToken, String> {
    let id = hex::encode(random(ID_BYTES)?);
    let secret = hex::encode(random(SECRET_BYTES)?);
    let salt = random(SALT_BYTES)?;
    let stored = StoredSecret {
        id: id.clone(),
        hash: digest(&salt, &secret),
        salt: hex::encode(salt),
    };
    Ok(NewToken {
        token: format!("{PREFIX}{id}_{secret}"),
        stored,
    })
}

/// The stored form of a token given as text (bootstrap files), with a new salt.
pub(crate) fn stored_of(token: &str) -> Result<StoredSecret, String> {
    let presented = parse(token).ok_or_else(|| {
        "is not a unitable token (`ut_` + 12 hex digits + `_` + 64 hex digits)".to_string()
    })?;
    let salt = random(SALT_BYTES)?;
    Ok(StoredSecret {
        id: presented.id.to_string(),
        hash: digest(&salt, presented.secret),
        salt: hex::encode(salt),
    })
}

/// Splits `ut_<id>_<secret>`; `None` for anything else.
pub(crate) fn parse(token: &str) -> Option<Presented<'_>> {
    let rest = token.trim().strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of =
        |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some(Presented { id, secret })
}

/// Whether `presented` matches `stored`.
pub(crate) fn verify(stored: &StoredSecret, presented: &Presented<'_>) -> bool {
    let Ok(salt) = hex::decode(&stored.salt) else {
        return false;
    };
    let actual = digest(&salt, presented.secret);
    constant_time_eq(actual.as_bytes(), stored.hash.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify_and_others_do_not() {
        let t = generate().unwrap();
        let p = parse(&t.token).unwrap();
        assert_eq!(p.id, t.stored.id);
        assert!(verify(&t.stored, &p));
        let other = generate().unwrap();
        assert!(!verify(&t.stored, &parse(&other.token).unwrap()));
        assert!(!t.stored.hash.contains(p.secret));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        assert!(parse("").is_none());
        assert!(parse("ut_abc_def").is_none());
        assert!(parse("Bearer x").is_none());
        let t = generate().unwrap();
        assert!(parse(&t.token[1..]).is_none());
    }

    #[test]
    fn stored_of_rehashes_with_a_new_salt() {
        let t = generate().unwrap();
        let s = stored_of(&t.token).unwrap();
        assert_ne!(s.salt, t.stored.salt);
        assert!(verify(&s, &parse(&t.token).unwrap()));
    }
}
