//! Seals a payload, prints the envelope's clear fields, opens it, and shows the apply-side
//! decision at the cutover boundary.
//!
//! Run: `cargo run -p raft-envelope-core --example seal_open`

use std::sync::Arc;

use raft_envelope_core::wire::{EnvelopeHeader, FORMAT_VERSION, HEADER_LEN, OVERHEAD, TAG_LEN};
use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, Decision, EntryKind, EnvelopeCipher, KeyId, Keyring,
    PayloadUnwrapper, PayloadWrapper, ProposalId, SecretKey,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keyring = Arc::new(Keyring::new());
    keyring.insert(KeyId(1), Algorithm::Aes256Gcm, SecretKey::generate()?)?;
    keyring.promote(KeyId(1))?;
    let cipher = Arc::new(EnvelopeCipher::new(ClusterId::new("demo-cluster")?, keyring.clone()));

    let payload = b"SET balance:alice 100";
    let envelope = cipher.seal(ProposalId(7), payload)?;
    let header = EnvelopeHeader::parse(&envelope)?;
    println!("sealed {} payload bytes into a {}-byte envelope", payload.len(), envelope.len());
    println!("  version     {FORMAT_VERSION}");
    println!("  algorithm   {}", header.algorithm);
    println!("  purpose     {}", header.purpose);
    println!("  key id      {}", header.key_id);
    println!("  proposal id {}", header.proposal_id);
    println!("  nonce       {}", hex(&header.nonce));
    println!("  ciphertext  {} bytes + {TAG_LEN}-byte tag", envelope.len() - OVERHEAD);
    println!("opened: {:?}", String::from_utf8_lossy(&cipher.open(&envelope)?));

    let cutover = 100;
    let gate = ApplyGate::new(Arc::new(Cutover::at(cutover))).with_unwrapper(cipher.clone());
    println!("\napply-side decisions with cutover C = {cutover}:");
    let mut tampered = envelope.clone();
    tampered[HEADER_LEN] ^= 1;
    let cases: [(u64, EntryKind, &[u8], &str); 5] = [
        (cutover, EntryKind::Cleartext, b"legacy", "cleartext at C"),
        (cutover + 1, EntryKind::Cleartext, b"late", "cleartext at C+1"),
        (cutover - 1, EntryKind::Envelope, &envelope, "envelope at C-1"),
        (cutover + 1, EntryKind::Envelope, &envelope, "envelope at C+1"),
        (cutover + 2, EntryKind::Envelope, &tampered, "tampered envelope at C+2"),
    ];
    for (index, kind, bytes, label) in cases {
        match gate.decide(index, kind, bytes) {
            Ok(Decision::PassThrough(b)) => println!("  {label:<26} pass through {} bytes", b.len()),
            Ok(Decision::Opened(p)) => println!("  {label:<26} opened to {} plaintext bytes", p.len()),
            Err(halt) => println!("  {label:<26} HALT: {halt}"),
        }
    }
    println!("\nkey stats: {:?}", keyring.stats());
    println!("gate stats: {:?}", gate.stats());
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
