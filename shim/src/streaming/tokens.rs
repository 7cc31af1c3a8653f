//! Single-use tokens that name a pending streaming request in its URL, as kubelet's streaming
//! server does (request_cache.go): a CRI Exec/Attach/PortForward call files the request, the
//! client's HTTP request consumes it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

/// How long a URL stays usable.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests waiting for their client at once; more are refused.
pub const MAX_PENDING: usize = 1000;
/// Random bytes per token (16 URL-safe characters).
const TOKEN_BYTES: usize = 12;

pub struct TokenCache<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (T, Instant)>>,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Files `value` and returns its fresh token.
    pub fn insert(&self, value: T) -> Result<String, String> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, expires)| *expires > now);
        if entries.len() >= MAX_PENDING {
            return Err(format!(
                "too many pending streaming requests (at most {MAX_PENDING})"
            ));
        }
        let token = loop {
            let mut raw = [0u8; TOKEN_BYTES];
            rand::thread_rng().fill_bytes(&mut raw);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !entries.contains_key(&token) {
                break token;
            }
        };
        entries.insert(token.clone(), (value, now + self.ttl));
        Ok(token)
    }

    /// Takes the request a token names, once, if it has not expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (value, expires) = entries.remove(token)?;
        (expires > Instant::now()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_url_safe_and_capped() {
        let cache = TokenCache::new(TOKEN_TTL);
        let token = cache.insert(7).unwrap();
        assert!(token.len() >= 8);
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(cache.consume(&token), Some(7));
        assert_eq!(cache.consume(&token), None);
        assert_eq!(cache.consume("nope"), None);
        for i in 0..MAX_PENDING {
            cache.insert(i).unwrap();
        }
        assert!(cache.insert(0).is_err());
    }

    #[test]
    fn expired_tokens_are_gone() {
        let cache = TokenCache::new(Duration::ZERO);
        let token = cache.insert(1).unwrap();
        assert_eq!(cache.consume(&token), None);
        // Expired entries do not count toward the cap.
        for i in 0..=MAX_PENDING {
            cache.insert(i).unwrap();
        }
    }
}
