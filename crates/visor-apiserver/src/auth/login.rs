//! `POST /login`: HTTP Basic credentials in, a signed login token out.
//!
//! Answer (200): `{"token", "expirationTimestamp", "user", "groups"}`. A wrong password and
//! an unknown user get the same `401` after the same work (the provider checks a decoy hash
//! for unknown users). Repeated failures are slowed down ([`Throttle`]): per user name and
//! per client address, each failure beyond the first few doubles the wait before the next
//! attempt is even looked at, up to a bound; a success clears the user's and the address's
//! count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Failures allowed before attempts are slowed.
const FREE_FAILURES: u32 = 3;
/// The wait after the first slowed failure; it doubles with each further failure.
const BASE_DELAY: Duration = Duration::from_millis(250);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// A failure count is forgotten after this long without failures.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Entries kept before stale ones are swept (bounds memory under a spray of names).
const SWEEP_AT: usize = 10_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failure counts per user name and per client address; see the module documentation.
#[derive(Default)]
pub struct Throttle {
    users: Mutex<HashMap<String, Failures>>,
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

fn delay_for(failures: Option<Failures>, now: Instant) -> Duration {
    match failures {
        Some(f) if now.duration_since(f.last) < FORGET_AFTER && f.count >= FREE_FAILURES => {
            let doublings = (f.count - FREE_FAILURES).min(16);
            (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
        }
        _ => Duration::ZERO,
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Failures>>, key: K, now: Instant) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= SWEEP_AT {
        map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
    }
    let entry = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
    });
    if now.duration_since(entry.last) >= FORGET_AFTER {
        entry.count = 0;
    }
    entry.count = entry.count.saturating_add(1);
    entry.last = now;
}

impl Throttle {
    /// How long an attempt for `user` from `address` must wait before it is checked.
    pub fn delay(&self, user: &str, address: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let by_user = delay_for(
            self.users
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(user)
                .copied(),
            now,
        );
        let by_address = address
            .map(|a| {
                delay_for(
                    self.addresses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&a)
                        .copied(),
                    now,
                )
            })
            .unwrap_or_default();
        by_user.max(by_address)
    }

    pub fn failed(&self, user: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        bump(&self.users, user.to_string(), now);
        if let Some(address) = address {
            bump(&self.addresses, address, now);
        }
    }

    pub fn succeeded(&self, user: &str, address: Option<IpAddr>) {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
        if let Some(address) = address {
            self.addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&address);
        }
    }
}

/// Credentials from an `Authorization: Basic` header. The `Debug` form hides the password.
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredentials({:?}, ****)", self.username)
    }
}

/// Parses `Basic base64(user:password)`; `None` if absent or malformed.
pub fn basic_credentials(header: Option<&str>) -> Option<BasicCredentials> {
    let value = header?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(BasicCredentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_per_user_and_address_and_success_clears() {
        let throttle = Throttle::default();
        let here: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let there: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.delay("alice", here), Duration::ZERO);
            throttle.failed("alice", here);
        }
        assert_eq!(throttle.delay("alice", here), BASE_DELAY);
        throttle.failed("alice", here);
        assert_eq!(throttle.delay("alice", here), BASE_DELAY * 2);
        // The user is slowed from any address; the address for any user.
        assert_eq!(throttle.delay("alice", there), BASE_DELAY * 2);
        assert_eq!(throttle.delay("bob", here), BASE_DELAY * 2);
        assert_eq!(throttle.delay("bob", there), Duration::ZERO);
        for _ in 0..40 {
            throttle.failed("alice", here);
        }
        assert_eq!(throttle.delay("alice", here), MAX_DELAY);
        throttle.succeeded("alice", here);
        assert_eq!(throttle.delay("alice", here), Duration::ZERO);
    }

    #[test]
    fn basic_credentials_parse() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pa:ss")
        );
        let creds = basic_credentials(Some(&header)).unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("alice", "pa:ss")
        );
        assert!(!format!("{creds:?}").contains("pa:ss"));
        assert!(basic_credentials(Some("Bearer x")).is_none());
        assert!(basic_credentials(Some("Basic !!!")).is_none());
        assert!(basic_credentials(None).is_none());
    }
}
