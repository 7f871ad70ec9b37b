//! How many connections each client holds, and the cap on it: one client
//! cannot take every connection the proxy serves (idle connections hold
//! theirs until the header timeout), so the others are still served while
//! it abuses its share. A client is an IP address; every client of a unix
//! socket is one client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections held per client, against a cap.
#[derive(Debug)]
pub(crate) struct ClientCounts {
    cap: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One connection of a client, counted until dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Arc<ClientCounts>,
    key: Arc<str>,
}

impl ClientCounts {
    pub fn new(cap: usize) -> Arc<ClientCounts> {
        Arc::new(ClientCounts {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection of `client` (as the audit log names
    /// it: `ip:port`, or `unix`), or None when it holds the cap already.
    pub fn try_take(self: &Arc<Self>, client: &str) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(Arc::from(key)).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: self.clone(),
            key: Arc::from(key),
        })
    }

    #[cfg(test)]
    fn held_by(&self, client: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(client_key(client)).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self
            .counts
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The client part of a peer name: `192.0.2.1:5000` is `192.0.2.1`,
/// `[2001:db8::1]:5000` is `[2001:db8::1]`; anything without a port is
/// itself.
fn client_key(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_address_whatever_its_port() {
        assert_eq!(client_key("192.0.2.1:5000"), "192.0.2.1");
        assert_eq!(client_key("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(client_key("[::ffff:192.0.2.1]:1"), "[::ffff:192.0.2.1]");
        assert_eq!(client_key("unix"), "unix");
    }

    #[test]
    fn a_client_gets_the_cap_and_no_more_and_others_are_not_touched() {
        let counts = ClientCounts::new(2);
        let first = counts.try_take("192.0.2.1:1").unwrap();
        let _second = counts.try_take("192.0.2.1:2").unwrap();
        assert!(counts.try_take("192.0.2.1:3").is_none());
        let _other = counts.try_take("192.0.2.2:1").unwrap();
        drop(first);
        assert_eq!(counts.held_by("192.0.2.1:9"), 1);
        assert!(counts.try_take("192.0.2.1:4").is_some());
    }

    #[test]
    fn a_client_with_no_connection_left_is_forgotten() {
        let counts = ClientCounts::new(1);
        drop(counts.try_take("192.0.2.1:1").unwrap());
        assert!(counts.held.lock().unwrap().is_empty());
    }
}
