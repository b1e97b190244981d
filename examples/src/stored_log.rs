//! Reading and altering a stopped node's stored log, whichever engine wrote it: what
//! `raft-envelope-kv dump-log` and `tamper` do.

use std::path::Path;

use crate::{DiskStore, EngineKind};

/// The payload of every entry the node in `data_dir` stores, with its index.
///
/// # Errors
/// The store cannot be read.
pub fn dump(engine: EngineKind, data_dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, String> {
    match engine {
        EngineKind::Raftrs => Ok(DiskStore::stored_entries(&data_dir.join("raft.redb"))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| (e.index, e.data.to_vec()))
            .collect()),
        EngineKind::Openraft => crate::openraft_engine::stored_payloads(data_dir),
    }
}

/// Flips the last byte of the payload stored at `index` (an envelope's tag) in the node in
/// `data_dir`.
///
/// # Errors
/// The store cannot be read or written, or has no payload at `index`.
pub fn tamper(engine: EngineKind, data_dir: &Path, index: u64) -> Result<(), String> {
    match engine {
        EngineKind::Raftrs => {
            let path = data_dir.join("raft.redb");
            let entries = DiskStore::stored_entries(&path).map_err(|e| e.to_string())?;
            let mut entry = entries
                .into_iter()
                .find(|e| e.index == index && !e.data.is_empty())
                .ok_or_else(|| format!("no payload stored at {index}"))?;
            let mut data = entry.data.to_vec();
            if let Some(last) = data.last_mut() {
                *last ^= 0x01;
            }
            entry.data = data.into();
            DiskStore::overwrite_entry(&path, &entry).map_err(|e| e.to_string())
        }
        EngineKind::Openraft => crate::openraft_engine::tamper(data_dir, index),
    }
}
