//! The operator tool's library, shared by the `raft-envelope` binary and the KV service's demo:
//! [`inspect`] (what stored bytes are, never their secret parts) and [`node`] (the admin API of
//! a running KV service node, `examples/`).
#![forbid(unsafe_code)]

pub mod inspect;
pub mod node;
