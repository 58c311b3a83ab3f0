//! Client authentication: HTTP Basic against the cluster's credentials.
//!
//! Passwords are stored only as salted argon2 hashes inside the replicated cluster config.
//! argon2 is slow and memory-hard on purpose (about 19 MiB and tens of milliseconds of CPU per
//! check), so a header that verified once is remembered (in this process's memory, per password
//! hash) and later requests with it cost a set lookup.
//!
//! Checks run one at a time. Without that limit, 256 clients opening connections at once each
//! started an argon2 check of the same header: three nodes on two cores spent seconds hashing
//! and creating blocking threads, heartbeats missed their deadlines and the cluster held
//! elections. Queued behind one check, the first verifies the header and the rest find it
//! remembered. A flood of wrong passwords thus costs one core at most, never memory.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use argon2::password_hash::SaltString;
use argon2::Argon2;
use argon2::PasswordHash;
use argon2::PasswordHasher;
use argon2::PasswordVerifier;
use base64::Engine;
use tokio::sync::Semaphore;

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
    // The scheme's name is case-insensitive (RFC 9110 11.1).
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
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
pub struct Verifier {
    verified: Mutex<Verified>,
    /// One permit: the argon2 check that may run.
    hashing: Semaphore,
    checks: AtomicU64,
    refusals: AtomicU64,
}

/// Headers that passed against one password hash; a new hash starts the set over. Looking a
/// header up needs no allocation, which every authenticated request does.
#[derive(Default)]
struct Verified {
    password_hash: String,
    headers: HashSet<String>,
}

impl Verified {
    fn contains(&self, credentials: &Credentials, header: &str) -> bool {
        self.password_hash == credentials.password_hash && self.headers.contains(header)
    }

    fn insert(&mut self, credentials: &Credentials, header: &str) {
        if self.password_hash != credentials.password_hash || self.headers.len() >= CACHE_LIMIT {
            self.password_hash.clone_from(&credentials.password_hash);
            self.headers.clear();
        }
        self.headers.insert(header.to_string());
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            verified: Mutex::default(),
            hashing: Semaphore::new(1),
            checks: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }
}

impl Verifier {
    pub async fn check(&self, credentials: &Credentials, header: Option<&str>) -> bool {
        let valid = match header {
            Some(header) => self.check_header(credentials, header).await,
            None => false,
        };
        if !valid {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        valid
    }

    /// argon2 checks run so far: headers not yet remembered.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Requests refused for missing or wrong credentials.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    async fn check_header(&self, credentials: &Credentials, header: &str) -> bool {
        if self.remembers(credentials, header) {
            return true;
        }
        let _permit = self.hashing.acquire().await.expect("never closed");
        // Another request with this header may have verified it while this one queued.
        if self.remembers(credentials, header) {
            return true;
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        // Off the async workers, so that heartbeats and other requests go on meanwhile.
        let (owned_credentials, owned_header) = (credentials.clone(), header.to_string());
        let valid = tokio::task::spawn_blocking(move || verify(&owned_credentials, &owned_header))
            .await
            .unwrap_or(false);
        if valid {
            let mut verified = self.verified.lock().expect("auth cache");
            verified.insert(credentials, header);
        }
        valid
    }

    fn remembers(&self, credentials: &Credentials, header: &str) -> bool {
        let verified = self.verified.lock().expect("auth cache");
        verified.contains(credentials, header)
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
        let lower_case_scheme = basic_header("admin", "s3cret").replacen("Basic", "basic", 1);
        assert!(check(Some(lower_case_scheme)).await);
        assert!(!check(None).await);
        assert_eq!(verifier.refusals(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_share_one_check() {
        let credentials = Credentials {
            username: "admin".into(),
            password_hash: hash_password("s3cret").unwrap(),
        };
        let verifier = std::sync::Arc::new(Verifier::default());
        let header = basic_header("admin", "s3cret");
        let checks: Vec<_> = (0..32)
            .map(|_| {
                let (verifier, credentials, header) =
                    (verifier.clone(), credentials.clone(), header.clone());
                tokio::spawn(async move { verifier.check(&credentials, Some(&header)).await })
            })
            .collect();
        for check in checks {
            assert!(check.await.unwrap());
        }
        assert_eq!(verifier.checks(), 1);
        assert_eq!(verifier.refusals(), 0);
    }
}
