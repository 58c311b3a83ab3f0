//! Client authentication: HTTP Basic against the cluster's credentials.
//!
//! Passwords are stored only as salted argon2 hashes inside the replicated cluster config.
//! argon2 is slow on purpose, so a header that verified once is remembered (in this process's
//! memory, per password hash) and later requests with it cost a set lookup.

use std::collections::HashSet;
use std::sync::Mutex;

use argon2::password_hash::SaltString;
use argon2::Argon2;
use argon2::PasswordHash;
use argon2::PasswordHasher;
use argon2::PasswordVerifier;
use base64::Engine;

use crate::domain::cluster::Credentials;

/// Most headers remembered before the cache starts over.
const CACHE_LIMIT: usize = 1024;

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| format!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Splits an `Authorization: Basic ...` header into user and password.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

pub fn basic_header(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Verifies Basic headers, remembering the ones that passed.
#[derive(Default)]
pub struct Verifier {
    verified: Mutex<HashSet<(String, String)>>,
}

impl Verifier {
    pub async fn check(&self, credentials: &Credentials, header: Option<&str>) -> bool {
        let Some(header) = header else {
            return false;
        };
        let key = (credentials.password_hash.clone(), header.to_string());
        if self.verified.lock().expect("auth cache").contains(&key) {
            return true;
        }
        // argon2 is slow on purpose: keep it off the async workers, so wrong passwords
        // cannot stall other requests.
        let (credentials, header) = (credentials.clone(), header.to_string());
        let valid = tokio::task::spawn_blocking(move || verify(&credentials, &header))
            .await
            .unwrap_or(false);
        if valid {
            let mut cache = self.verified.lock().expect("auth cache");
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key);
        }
        valid
    }
}

fn verify(credentials: &Credentials, header: &str) -> bool {
    let Some((user, password)) = parse_basic(header) else {
        return false;
    };
    let Ok(hash) = PasswordHash::new(&credentials.password_hash) else {
        return false;
    };
    crate::constant_time_eq(user.as_bytes(), credentials.username.as_bytes())
        & Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let credentials = Credentials {
            username: "admin".into(),
            password_hash: hash_password("s3cret").unwrap(),
        };
        let verifier = Verifier::default();
        let check = |header: Option<String>| {
            let verifier = &verifier;
            let credentials = &credentials;
            async move { verifier.check(credentials, header.as_deref()).await }
        };
        assert!(check(Some(basic_header("admin", "s3cret"))).await);
        assert!(check(Some(basic_header("admin", "s3cret"))).await);
        assert!(!check(Some(basic_header("admin", "wrong"))).await);
        assert!(!check(Some(basic_header("root", "s3cret"))).await);
        assert!(!check(Some("Bearer x".into())).await);
        assert!(!check(None).await);
    }
}
