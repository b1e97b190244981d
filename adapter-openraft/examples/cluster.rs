//! The main demo: a 3-node openraft cluster in one process with the envelope layer.
//!
//! ```text
//! cargo run -p raft-envelope-openraft --example cluster
//! ```
//!
//! Writes a few keys in the clear, switches encryption on while the cluster runs, writes more,
//! shows one replica's stored log and applied state, then tampers with one stored entry on one
//! replica: that replica halts at the entry with a typed error while the others keep serving.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::{
    Algorithm, ApplyGate, ClusterId, Cutover, EntryKind, EnvelopeCipher, EnvelopeLayer, KeyId, Keyring,
    SecretKey,
};
use raft_envelope_openraft::testing::{KvApp, TestCluster};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    println!("raft-envelope on openraft 0.9: a 3-node cluster in one process\n");

    // One data key, distributed out of band; every node has its own keyring holding a copy.
    let material = *SecretKey::generate()?.expose_secret();
    let cipher = || -> Result<Arc<EnvelopeCipher>, Box<dyn Error>> {
        let ring = Keyring::with_active_key(KeyId(1), Algorithm::Aes256Gcm, SecretKey::from_bytes(material))?;
        Ok(Arc::new(EnvelopeCipher::new(ClusterId::new("demo-cluster")?, Arc::new(ring))))
    };
    let ciphers = [cipher()?, cipher()?, cipher()?];
    let cutovers: Vec<Arc<Cutover>> = (0..3).map(|_| Arc::new(Cutover::inert())).collect();

    step(1, "start 3 nodes; the layer is installed but inert (no sealing, no cutover)");
    let nodes = (0..3)
        .map(|i| {
            let gate = ApplyGate::new(cutovers[i].clone()).with_unwrapper(ciphers[i].clone());
            (Arc::new(EnvelopeLayer::new(gate)), KvApp::default())
        })
        .collect();
    let cluster = TestCluster::start(nodes).await?;
    println!("   leader: node {}", cluster.wait_leader(WAIT).await?);

    step(2, "write a few keys (stored in the clear: encryption is not on yet)");
    for kv in ["user:1=alice", "user:2=bob", "plan:1=free"] {
        put(&cluster, kv).await?;
    }

    step(3, "switch encryption on: seal on every node -> drain -> commit a barrier -> set the cutover");
    let cutover = cluster.switch_on(ciphers[0].clone(), &cutovers, WAIT).await?;
    println!(
        "   cutover C = {cutover} (the barrier entry): every payload above {cutover} must be an envelope"
    );

    step(4, "write more keys (sealed before they reach the log)");
    for kv in ["card:1=4111-1111-1111-1111", "card:2=5500-0000-0000-0004", "user:1=alice-smith"] {
        put(&cluster, kv).await?;
    }
    let last = cluster.last_index()?;
    for id in cluster.ids() {
        cluster.wait_applied(id, last, WAIT).await?;
    }

    step(5, "node 3's stored log (what its disk holds) and its applied state");
    print_log(&cluster, 3)?;
    print_state(&cluster, 3)?;
    for id in cluster.ids() {
        let leaked = cluster.log_contains(id, b"4111-1111")?;
        println!("   card number in node {id}'s stored log bytes: {}", if leaked { "FOUND" } else { "no" });
    }

    step(6, "tamper: flip one bit of a stored envelope on node 3, before node 3 applies it");
    cluster.hold_commit(3, true)?; // node 3 stores the next entry but does not learn it is committed yet
    let tampered = put(&cluster, "card:3=3400-0000-0000-009").await?;
    cluster.wait_stored(3, tampered, WAIT).await?;
    cluster.tamper(3, tampered, |bytes| bytes[30] ^= 0x01)?;
    println!("   flipped bit 0 of byte 30 of entry {tampered} in node 3's log");
    cluster.hold_commit(3, false)?;
    let halt = cluster.wait_halted(3, WAIT).await?;
    println!("   node 3 HALTED: {halt}");
    println!(
        "   node 3 applied index: {} (the last good entry; nothing of entry {tampered} reached it)",
        cluster.applied_index(3)?
    );
    let running = cluster.node(3)?.running_raft().map(|r| r.metrics().borrow().running_state.is_ok());
    println!(
        "   node 3 engine running: {}",
        if running == Some(true) { "yes" } else { "no (Fatal: stopped)" }
    );

    step(7, "the other nodes keep serving");
    let index = put(&cluster, "plan:1=pro").await?;
    for id in [1, 2] {
        cluster.wait_applied(id, index, WAIT).await?;
        println!(
            "   node {id} applied index {}; halted: {}",
            cluster.applied_index(id)?,
            cluster.halted(id)?.is_some()
        );
    }
    print_state(&cluster, 1)?;

    step(8, "restart node 3 with the same log and keys: it fails on the same entry again (sticky)");
    let layer = |i: usize| {
        let gate = ApplyGate::new(cutovers[i].clone()).with_unwrapper(ciphers[i].clone());
        Arc::new(EnvelopeLayer::new(gate).with_wrapper(ciphers[i].clone()))
    };
    cluster.restart(3, layer(2)).await?;
    match cluster.node(3)?.halt.get() {
        Some(halt) => println!("   Raft::new on node 3 failed again: {halt}"),
        None => println!("   node 3 started (unexpected)"),
    }
    println!("   node 3 applied index: {}", cluster.applied_index(3)?);

    step(
        9,
        "repair: restore the entry's bytes from a healthy replica, restart node 3: it resumes and converges",
    );
    if let Some((kind, bytes)) = cluster.read_entry(1, tampered)? {
        cluster.write_entry(3, tampered, kind, bytes)?;
    }
    cluster.restart(3, layer(2)).await?;
    cluster.wait_applied(3, index, WAIT).await?;
    println!(
        "   node 3 applied index: {}; halted: {}",
        cluster.applied_index(3)?,
        cluster.halted(3)?.is_some()
    );
    let same =
        cluster.node(3)?.sm.with_app(|a| a.data.clone()) == cluster.node(1)?.sm.with_app(|a| a.data.clone());
    println!("   node 3 state equals node 1 state: {same}");

    cluster.shutdown().await;
    println!("\ndone.");
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

async fn put(cluster: &TestCluster<KvApp>, kv: &str) -> Result<u64, Box<dyn Error>> {
    let response = cluster.write(kv.as_bytes().to_vec()).await?;
    let previous = String::from_utf8_lossy(&response.data).into_owned();
    let previous = if previous.is_empty() { "-".to_string() } else { previous };
    println!("   put {kv:<30} -> log index {:>2}, previous value: {previous}", response.log_id.index);
    Ok(response.log_id.index)
}

fn print_log(cluster: &TestCluster<KvApp>, id: u64) -> Result<(), Box<dyn Error>> {
    println!("   {:>5}  {:>4}  {:<10}  {:<7}  first bytes", "index", "term", "kind", "key");
    for e in cluster.stored_entries(id)? {
        let key = e.key_id.map(|k| k.to_string()).unwrap_or_else(|| "-".into());
        let shown = match e.kind {
            EntryKind::Cleartext => format!("\"{}\"", String::from_utf8_lossy(&e.bytes)),
            EntryKind::Envelope => {
                // Skip the 28-byte clear header (version, algorithm, purpose, key id, proposal
                // id, nonce): show the start of the ciphertext.
                let hex: Vec<String> = e.bytes.iter().skip(28).take(10).map(|b| format!("{b:02x}")).collect();
                format!("ciphertext {} .. ({} bytes)", hex.join(" "), e.bytes.len())
            }
            _ => "-".into(),
        };
        println!("   {:>5}  {:>4}  {:<10}  {:<7}  {shown}", e.index, e.term, e.label, key);
    }
    Ok(())
}

fn print_state(cluster: &TestCluster<KvApp>, id: u64) -> Result<(), Box<dyn Error>> {
    let node = cluster.node(id)?;
    let data = node.sm.with_app(|a| a.data.clone());
    println!("   node {id} applied state (applied index {}):", cluster.applied_index(id)?);
    for (k, v) in data {
        println!("     {k:<8} = {v}");
    }
    Ok(())
}
