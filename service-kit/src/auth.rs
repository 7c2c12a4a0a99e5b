//! Bearer credentials: generation, hashing for storage, and constant-time checks.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::http_error::HttpError;

/// A fresh random credential: 32 bytes from the OS generator, hex-encoded, with a readable
/// prefix saying what it is for (for example `board_…`).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// SHA-256 of a credential, hex-encoded. Credentials are 256-bit random values, so a fast hash
/// is enough to store them safely (passwords chosen by people need a memory-hard hash instead).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// Checks that the request carries exactly `expected` as its bearer token.
pub fn require_token(headers: &HeaderMap, expected: &str) -> Result<(), HttpError> {
    match bearer(headers) {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(HttpError::unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_are_unique_and_prefixed() {
        let a = new_token("board");
        assert!(a.starts_with("board_") && a.len() == 6 + 64);
        assert_ne!(a, new_token("board"));
        assert_eq!(hash_token("x"), hash_token("x"));
        assert_ne!(hash_token("x"), hash_token("y"));
    }

    #[test]
    fn bearer_checks() {
        let mut headers = HeaderMap::new();
        assert!(require_token(&headers, "secret").is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert!(require_token(&headers, "secret").is_err());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer secret"));
        assert!(require_token(&headers, "secret").is_ok());
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic secret"));
        assert!(require_token(&headers, "secret").is_err());
    }
}
