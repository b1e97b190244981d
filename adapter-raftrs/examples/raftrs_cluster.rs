//! The main demo: a 3-node raft-rs cluster in one process with the envelope layer.
//!
//! ```text
//! cargo run -p raft-envelope-raftrs --example raftrs_cluster
//! ```
//!
//! Writes a few keys in the clear, switches encryption on while the cluster runs, writes more,
//! shows one replica's stored log and applied state, then tampers with one stored entry on one
//! replica: that replica halts at the entry with a typed error while the others keep serving.

use std::error::Error;
use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};
use raft_envelope_core::{
    wire::{EnvelopeHeader, HEADER_LEN},
    Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring,
    PayloadWrapper, SecretKey,
};
use raft_envelope_raftrs::framing::{classify, ContextMarker, MarkerKind};
use raft_envelope_raftrs::testing::{Cluster, KvStore};

fn main() -> Result<(), Box<dyn Error>> {
    println!("raft-envelope on raft-rs 0.7: a 3-node cluster in one process\n");

    // One data key, distributed out of band; every node has its own keyring holding a copy.
    let material = *SecretKey::generate()?.expose_secret();
    let cipher = || -> Result<Arc<EnvelopeCipher>, Box<dyn Error>> {
        let ring = Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes(material))?;
        Ok(Arc::new(EnvelopeCipher::new(ClusterId::new("demo-cluster")?, Arc::new(ring))))
    };
    let ciphers = [cipher()?, cipher()?, cipher()?];
    let cutovers: Vec<Arc<Cutover>> = (0..3).map(|_| Arc::new(Cutover::inert())).collect();
    let layer = |i: usize| {
        let gate = ApplyGate::new(cutovers[i].clone()).with_unwrapper(ciphers[i].clone());
        Arc::new(EnvelopeLayer::new(gate))
    };

    step(1, "start 3 nodes; the layer is installed but inert (no sealing, no cutover)");
    let mut cluster = Cluster::new((0..3).map(layer).collect(), |_| KvStore::default())?;
    println!("   leader: node {}", cluster.wait_leader()?);

    step(2, "write a few keys (stored in the clear: encryption is not on yet)");
    for kv in ["user:1=alice", "user:2=bob", "plan:1=free"] {
        put(&mut cluster, kv)?;
    }

    step(3, "switch encryption on: seal on every node -> commit a barrier -> set the cutover");
    let cutover = cluster.switch_on(
        |id| ciphers[(id - 1) as usize].clone() as Arc<dyn PayloadWrapper>,
        |id, c| cutovers[(id - 1) as usize].set(Some(c)),
    )?;
    println!(
        "   cutover C = {cutover} (the barrier entry): every payload above {cutover} must be an envelope"
    );

    step(4, "write more keys (sealed before they reach the log; one through a follower, which forwards it)");
    for kv in ["card:1=4111-1111-1111-1111", "card:2=5500-0000-0000-0004"] {
        put(&mut cluster, kv)?;
    }
    let leader = cluster.wait_leader()?;
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap_or(leader);
    let applied = cluster.propose_via(follower, b"user:1=alice-smith".to_vec())?;
    println!(
        "   put {:<30} -> log index {:>2} (proposed on node {follower})",
        "user:1=alice-smith", applied.index
    );
    cluster.wait_converged(leader)?;

    step(5, "node 3's stored log (what its disk holds) and its applied state");
    print_log(&cluster, 3)?;
    print_state(&cluster, 3)?;
    for id in cluster.ids() {
        let leaked = log_contains(&cluster, id, b"4111-1111")?;
        println!("   card number in node {id}'s stored log bytes: {}", if leaked { "FOUND" } else { "no" });
    }

    step(6, "tamper: flip one bit of a stored envelope on node 3, before node 3 applies it");
    cluster.hold_commit(3, true)?; // node 3 stores the next entry but does not learn it is committed yet
    let tampered = put(&mut cluster, "card:3=3400-0000-0000-009")?;
    let mut entry = cluster.read_entry(3, tampered)?.ok_or("entry not stored on node 3")?;
    let mut data = entry.data.to_vec();
    data[30] ^= 0x01;
    cluster.write_entry(3, tampered, data, entry.context.to_vec())?;
    println!("   flipped bit 0 of byte 30 of entry {tampered} in node 3's log");
    cluster.hold_commit(3, false)?;
    cluster.wait_until(|c| c.halted(3).map(|h| h.is_some()).unwrap_or(true));
    let halt = cluster.halted(3)?.ok_or("node 3 did not halt")?;
    println!("   node 3 HALTED: {halt}");
    let node3 = cluster.node(3)?;
    println!(
        "   node 3 applied index: {} (the last good entry; nothing of entry {tampered} reached it); \
         raft-rs applied: {}",
        node3.applied(),
        node3.raw_node().raft.raft_log.applied
    );
    println!("   node 3 is no longer driven: no tick, step, propose or advance");

    step(7, "the other nodes keep serving");
    let index = put(&mut cluster, "plan:1=pro")?;
    for id in [1, 2] {
        cluster.wait_applied(id, index)?;
        println!(
            "   node {id} applied index {}; halted: {}",
            cluster.applied(id)?,
            cluster.halted(id)?.is_some()
        );
    }
    print_state(&cluster, 1)?;

    step(
        8,
        "restart node 3 with the same log and keys (Config.applied = last good): it halts again (sticky)",
    );
    cluster.restart(3, layer(2))?;
    match cluster.halted(3)? {
        Some(halt) => println!("   node 3 halted again: {halt}"),
        None => println!("   node 3 started (unexpected)"),
    }
    println!("   node 3 applied index: {}", cluster.applied(3)?);

    step(
        9,
        "repair: restore the entry's bytes from a healthy replica, restart node 3: it resumes and converges",
    );
    entry = cluster.read_entry(1, tampered)?.ok_or("entry not stored on node 1")?;
    cluster.write_entry(3, tampered, entry.data.to_vec(), entry.context.to_vec())?;
    cluster.restart(3, layer(2))?;
    cluster.wait_applied(3, index)?;
    println!("   node 3 applied index: {}; halted: {}", cluster.applied(3)?, cluster.halted(3)?.is_some());
    let same = cluster.state_machine(3)?.entries() == cluster.state_machine(1)?.entries();
    println!("   node 3 state equals node 1 state: {same}");

    println!("\ndone.");
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn put(cluster: &mut Cluster<KvStore>, kv: &str) -> Result<u64, Box<dyn Error>> {
    let applied = cluster.propose(kv.as_bytes().to_vec())?;
    println!("   put {kv:<30} -> log index {:>2}", applied.index);
    Ok(applied.index)
}

fn label(e: &Entry) -> &'static str {
    match (e.get_entry_type(), classify(e)) {
        (EntryType::EntryConfChange | EntryType::EntryConfChangeV2, _) => "conf",
        (_, EntryKind::Cleartext) => "cleartext",
        (_, EntryKind::Envelope) => "envelope",
        _ => match ContextMarker::decode(&e.context) {
            Some(Ok(m)) if m.kind == MarkerKind::Barrier => "barrier",
            _ => "blank",
        },
    }
}

fn print_log(cluster: &Cluster<KvStore>, id: u64) -> Result<(), Box<dyn Error>> {
    println!("   {:>5}  {:>4}  {:<10}  {:<7}  first bytes", "index", "term", "kind", "key");
    for index in 1..=cluster.stored_last_index(id)? {
        let Some(e) = cluster.read_entry(id, index)? else { continue };
        let key = match classify(&e) {
            EntryKind::Envelope => {
                EnvelopeHeader::parse(&e.data).map(|h| h.key_id.to_string()).unwrap_or_default()
            }
            _ => "-".into(),
        };
        let shown = match classify(&e) {
            EntryKind::Cleartext => format!("\"{}\"", String::from_utf8_lossy(&e.data)),
            EntryKind::Envelope => {
                // Skip the clear header (version, algorithm, purpose, key id, proposal id,
                // nonce): show the start of the ciphertext.
                let hex: Vec<String> =
                    e.data.iter().skip(HEADER_LEN).take(10).map(|b| format!("{b:02x}")).collect();
                format!("ciphertext {} .. ({} bytes)", hex.join(" "), e.data.len())
            }
            _ => "-".into(),
        };
        println!("   {:>5}  {:>4}  {:<10}  {:<7}  {shown}", e.index, e.term, label(&e), key);
    }
    Ok(())
}

fn print_state(cluster: &Cluster<KvStore>, id: u64) -> Result<(), Box<dyn Error>> {
    println!("   node {id} applied state (applied index {}):", cluster.applied(id)?);
    for (k, v) in cluster.state_machine(id)?.entries() {
        println!("     {k:<8} = {v}");
    }
    Ok(())
}

fn log_contains(cluster: &Cluster<KvStore>, id: u64, needle: &[u8]) -> Result<bool, Box<dyn Error>> {
    for index in 1..=cluster.stored_last_index(id)? {
        if let Some(e) = cluster.read_entry(id, index)? {
            if e.data.windows(needle.len()).any(|w| w == needle)
                || e.context.windows(needle.len()).any(|w| w == needle)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
