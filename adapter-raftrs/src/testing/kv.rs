//! A tiny key-value state machine for examples and tests.

use std::collections::BTreeMap;
use std::fmt;

use raft::eraftpb::{ConfState, Snapshot};

use crate::state_machine::StateMachine;

/// Applies payloads of the form `key=value`; anything else is recorded as an opaque payload.
/// The response is the key (or `"?"`), never the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<String, String>,
    payloads: Vec<(u64, Vec<u8>)>,
    applied: u64,
}

impl KvStore {
    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Every key and value.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.map
    }

    /// Every payload applied, with its index, in order.
    pub fn payloads(&self) -> &[(u64, Vec<u8>)] {
        &self.payloads
    }
}

impl StateMachine for KvStore {
    type Response = String;

    fn apply(&mut self, index: u64, _term: u64, payload: &[u8]) -> String {
        self.applied = index;
        self.payloads.push((index, payload.to_vec()));
        let text = String::from_utf8_lossy(payload);
        match text.split_once('=') {
            Some((k, v)) => {
                self.map.insert(k.to_owned(), v.to_owned());
                k.to_owned()
            }
            None => "?".to_owned(),
        }
    }

    fn apply_control(&mut self, index: u64, _term: u64, _conf_state: Option<&ConfState>) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Every payload with its index (u64 big-endian index, u64 big-endian length, bytes); the
    /// map is rebuilt from them.
    fn snapshot_data(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for (index, payload) in &self.payloads {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            out.extend_from_slice(payload);
        }
        Ok(out)
    }

    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let mut restored = KvStore::default();
        let mut bytes = snapshot.get_data();
        let malformed = || "malformed key-value snapshot".to_owned();
        while !bytes.is_empty() {
            let field = |b: &[u8], at: usize| -> Option<u64> {
                Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
            };
            let index = field(bytes, 0).ok_or_else(malformed)?;
            let len = usize::try_from(field(bytes, 8).ok_or_else(malformed)?).map_err(|_| malformed())?;
            let end = len.checked_add(16).ok_or_else(malformed)?;
            let payload = bytes.get(16..end).ok_or_else(malformed)?;
            restored.apply(index, 0, payload);
            bytes = &bytes[end..];
        }
        restored.applied = snapshot.get_metadata().index;
        *self = restored;
        Ok(())
    }
}

/// Shows only sizes: values may be sensitive.
impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("keys", &self.map.len())
            .field("payloads", &self.payloads.len())
            .field("applied", &self.applied)
            .finish()
    }
}
