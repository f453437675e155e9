//! Argon2id password hashing with the OWASP parameters (m = 19 456 KiB, t = 2, p = 1).
//! Hashing takes tens of milliseconds of CPU and 19 MiB of memory on purpose, so it always
//! runs on the blocking pool, never on an async worker.

use anyhow::Context as _;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::OnceLock;

use crate::config::Secret;

pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn hasher() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2 hashing: {e}"))?;
    Ok(hash.to_string())
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(h) = hasher() else {
        return false;
    };
    h.verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Hashes a password into a PHC string.
pub async fn hash(password: Secret<String>) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(password.expose()))
        .await
        .context("password hashing task")?
}

/// Checks a password against a stored PHC string.
pub async fn verify(password: Secret<String>, phc: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || verify_blocking(password.expose(), &phc))
        .await
        .context("password verification task")
}

/// Spends the same effort as a real verification, so a login for an unknown user takes as
/// long as one with a wrong password and does not reveal which users exist.
pub async fn verify_dummy(password: Secret<String>) -> anyhow::Result<()> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let phc = match DUMMY.get() {
            Some(p) => p.clone(),
            None => {
                let p = hash_blocking("dummy password for timing")?;
                DUMMY.get_or_init(|| p).clone()
            }
        };
        let _ = verify_blocking(password.expose(), &phc);
        Ok::<(), anyhow::Error>(())
    })
    .await
    .context("dummy verification task")?
}

/// Minimal password policy: long enough, not absurdly long (Argon2 input is bounded so a
/// megabyte password cannot be used to burn CPU).
pub fn check_policy(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < 8 {
        return Err("must be at least 8 characters");
    }
    if password.len() > 256 {
        return Err("must be at most 256 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_uses_owasp_argon2id_and_verifies() {
        let phc = hash(Secret::new("correct horse".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify(Secret::new("correct horse".into()), phc.clone())
                .await
                .unwrap()
        );
        assert!(
            !verify(Secret::new("wrong horse".into()), phc)
                .await
                .unwrap()
        );
        assert!(
            !verify(Secret::new("x".into()), "garbage".into())
                .await
                .unwrap()
        );
    }
}
