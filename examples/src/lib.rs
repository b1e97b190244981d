//! What a deployment of raft-envelope is made of, as parts a user copies.
//!
//! - [`DiskStore`]: crash-safe on-disk storage for a raft-rs node (log, hard state,
//!   configuration, retained snapshot) in one [`redb`] file, every change fsynced before raft-rs
//!   is told it is persisted. `DESIGN.md` says why redb.
#![forbid(unsafe_code)]

mod disk_store;

pub use disk_store::{DiskStore, OpenError};
