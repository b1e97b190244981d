//! The service's application: a key-value map, its commands and its snapshot format. The same
//! on both engines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A write, as it is proposed (JSON; sealed by the layer above the cutover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl Command {
    /// The command's bytes as proposed.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a proposed command back.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The map every replica builds by applying the same commands in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvMap {
    map: BTreeMap<String, String>,
}

impl KvMap {
    /// Applies `command`.
    pub fn apply(&mut self, command: &Command) {
        match command {
            Command::Put { key, value } => {
                self.map.insert(key.clone(), value.clone());
            }
            Command::Delete { key } => {
                self.map.remove(key);
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The map as snapshot bytes (sealed by the layer before they are stored or sent).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.map).unwrap_or_default()
    }

    /// A map from [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    /// The bytes are not a snapshot of this map.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map(|map| Self { map }).map_err(|e| format!("not a KV snapshot: {e}"))
    }
}
