//! The API key store: keys are random, shown once when created, and kept only as a SHA-256
//! hash (a key has 256 random bits, so a fast hash is as strong as a slow one here).
//!
//! # Key format
//!
//! `sk_<id>_<secret>`: `id` is 16 lowercase hex digits (8 random bytes) naming the key in
//! lists, logs and the audit log; `secret` is 64 lowercase hex digits (32 random bytes).
//! The store keeps `sha256(whole key)` and compares in constant time.
//!
//! # File format (`keys.jsonl`, journal version 1, see `crate::journal`)
//!
//! One JSON object per line:
//! - `{"v":1,"kind":"created","id","name","role","sha256","created_ms","created_by"}`
//! - `{"v":1,"kind":"revoked","id","revoked_ms","revoked_by"}`
//!
//! Folded in order when the store opens. The clear key is never written anywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, Role};
use crate::journal::{Journal, JournalError};
use crate::wal::Storage;

/// The key store's file in the data directory.
pub const KEYS_FILE: &str = "keys.jsonl";
/// Most keys the store holds (revoked ones included).
pub const KEYS_MAX: usize = 10_000;
/// Longest key name, in bytes.
pub const KEY_NAME_BYTES_MAX: usize = 64;

const PREFIX: &str = "sk_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A key as stored (no secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub created_by: String,
    pub revoked_ms: Option<u64>,
    pub revoked_by: Option<String>,
    #[serde(skip)]
    sha256: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Created {
        id: String,
        name: String,
        role: Role,
        sha256: String,
        created_ms: u64,
        created_by: String,
    },
    Revoked {
        id: String,
        revoked_ms: u64,
        revoked_by: String,
    },
}

/// Why presented credentials were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was presented")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key was revoked")]
    Revoked,
}

/// Why a key could not be created or revoked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(
        "the key name must have 1..={KEY_NAME_BYTES_MAX} bytes of letters, digits, space, - _ . @"
    )]
    BadName,
    #[error("the store holds {KEYS_MAX} keys already")]
    Full,
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("cannot read random bytes: {0}")]
    Random(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The open store. Reads are lock-free apart from a read lock; changes are serialised and
/// durable (`fdatasync`) when they return.
pub struct KeyStore {
    journal: Mutex<Journal>,
    keys: RwLock<HashMap<String, KeyRecord>>,
    /// Bumped by every revocation, so open connections re-check their key cheaply.
    generation: AtomicU64,
}

impl KeyStore {
    /// Opens (or creates) the store in `storage`.
    pub fn open(storage: &dyn Storage) -> Result<KeyStore, JournalError> {
        let (journal, entries) = Journal::open::<Entry>(storage, KEYS_FILE)?;
        let mut keys = HashMap::new();
        for (line, entry) in entries.into_iter().enumerate() {
            let corrupt = |problem| JournalError::corrupt(KEYS_FILE, line, problem);
            match entry {
                Entry::Created { id, name, role, sha256, created_ms, created_by } => {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(&sha256, &mut hash)
                        .map_err(|e| corrupt(format!("sha256: {e}")))?;
                    let record = KeyRecord {
                        id: id.clone(),
                        name,
                        role,
                        created_ms,
                        created_by,
                        revoked_ms: None,
                        revoked_by: None,
                        sha256: hash,
                    };
                    if keys.insert(id.clone(), record).is_some() {
                        return Err(corrupt(format!("key {id} is created twice")));
                    }
                }
                Entry::Revoked { id, revoked_ms, revoked_by } => {
                    let record = keys
                        .get_mut(&id)
                        .ok_or_else(|| corrupt(format!("revokes unknown key {id}")))?;
                    record.revoked_ms = Some(revoked_ms);
                    record.revoked_by = Some(revoked_by);
                }
            }
        }
        Ok(KeyStore {
            journal: Mutex::new(journal),
            keys: RwLock::new(keys),
            generation: AtomicU64::new(0),
        })
    }

    /// True when no key was ever created.
    pub fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut keys: Vec<_> = self.keys.read().values().cloned().collect();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        keys
    }

    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        self.keys.read().get(id).cloned()
    }

    /// Creates a key and returns its record and the clear key (to show once). Blocking (one
    /// `fdatasync`).
    pub fn create(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
        now_ms: u64,
    ) -> Result<(KeyRecord, String), KeyError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || " -_.@".contains(c);
        if name.trim().is_empty() || name.len() > KEY_NAME_BYTES_MAX || !name.chars().all(allowed) {
            return Err(KeyError::BadName);
        }
        let mut journal = self.journal.lock();
        if self.keys.read().len() >= KEYS_MAX {
            return Err(KeyError::Full);
        }
        let mut random = [0u8; 40];
        getrandom::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
        let id = hex::encode(&random[..8]);
        let key = format!("{PREFIX}{id}_{}", hex::encode(&random[8..]));
        let sha256: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let record = KeyRecord {
            id: id.clone(),
            name: name.to_string(),
            role,
            created_ms: now_ms,
            created_by: created_by.to_string(),
            revoked_ms: None,
            revoked_by: None,
            sha256,
        };
        journal.append(&[Entry::Created {
            id: id.clone(),
            name: record.name.clone(),
            role,
            sha256: hex::encode(sha256),
            created_ms: now_ms,
            created_by: record.created_by.clone(),
        }])?;
        self.keys.write().insert(id, record.clone());
        Ok((record, key))
    }

    /// Revokes a key: every later request presenting it is refused, on open connections too.
    /// Returns the record as it was. Blocking (one `fdatasync`).
    pub fn revoke(&self, id: &str, revoked_by: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
        let mut journal = self.journal.lock();
        let before = self.get(id).ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        if before.revoked_ms.is_some() {
            return Err(KeyError::AlreadyRevoked(id.to_string()));
        }
        journal.append(&[Entry::Revoked {
            id: id.to_string(),
            revoked_ms: now_ms,
            revoked_by: revoked_by.to_string(),
        }])?;
        if let Some(record) = self.keys.write().get_mut(id) {
            record.revoked_ms = Some(now_ms);
            record.revoked_by = Some(revoked_by.to_string());
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(before)
    }

    /// Checks a presented key.
    pub fn authenticate(&self, presented: &[u8]) -> Result<Principal, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        let id = parse_id(presented).ok_or(AuthError::Invalid)?;
        let keys = self.keys.read();
        let record = keys.get(id).ok_or(AuthError::Invalid)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if !bool::from(digest.ct_eq(&record.sha256)) {
            return Err(AuthError::Invalid);
        }
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(Principal {
            key_id: record.id.as_str().into(),
            name: record.name.as_str().into(),
            role: record.role,
        })
    }

    /// Changes whenever a key is revoked.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the key `id` exists and is not revoked.
    pub fn is_active(&self, id: &str) -> bool {
        self.keys.read().get(id).is_some_and(|k| k.revoked_ms.is_none())
    }
}

/// The id part of a well-formed key.
fn parse_id(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MemStorage;

    #[test]
    fn keys_authenticate_until_revoked_and_survive_reopening() {
        let storage = MemStorage::new();
        let store = KeyStore::open(&storage).expect("open");
        assert!(store.is_empty());
        let (record, key) = store.create("checkout svc", Role::Checkout, "test", 5).expect("new");
        assert_eq!(key.len(), 3 + 16 + 1 + 64);
        let principal = store.authenticate(key.as_bytes()).expect("valid");
        assert_eq!((&*principal.key_id, principal.role), (record.id.as_str(), Role::Checkout));
        assert_eq!(store.authenticate(b""), Err(AuthError::Missing));
        let mut wrong = key.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(store.authenticate(&wrong), Err(AuthError::Invalid));
        assert_eq!(store.authenticate(b"sk_nonsense"), Err(AuthError::Invalid));

        let generation = store.generation();
        store.revoke(&record.id, "admin", 9).expect("revoke");
        assert_ne!(store.generation(), generation);
        assert_eq!(store.authenticate(key.as_bytes()), Err(AuthError::Revoked));
        assert!(!store.is_active(&record.id));
        assert!(matches!(store.revoke(&record.id, "admin", 10), Err(KeyError::AlreadyRevoked(_))));
        assert!(matches!(store.revoke("nope", "admin", 10), Err(KeyError::NotFound(_))));
        assert!(matches!(store.create("", Role::Ops, "t", 1), Err(KeyError::BadName)));
        assert!(matches!(store.create("a\nb", Role::Ops, "t", 1), Err(KeyError::BadName)));

        let (_, other) = store.create("ops", Role::Ops, "test", 11).expect("new");
        let reopened = KeyStore::open(&storage).expect("reopen");
        assert_eq!(reopened.list(), store.list());
        assert_eq!(reopened.authenticate(key.as_bytes()), Err(AuthError::Revoked));
        assert_eq!(reopened.authenticate(other.as_bytes()).expect("valid").role, Role::Ops);
        // Only the hash is stored.
        let file = storage.read(KEYS_FILE).expect("file");
        let text = String::from_utf8(file.to_vec()).expect("utf-8");
        assert!(!text.contains(&key) && !text.contains(&other));
        assert!(text.contains(&hex::encode(Sha256::digest(other.as_bytes()))));
    }
}
