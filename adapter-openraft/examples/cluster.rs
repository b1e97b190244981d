//! The main demo: a 3-node openraft cluster in one process with the envelope layer.
//!
//! ```text
//! cargo run -p raft-envelope-openraft --example cluster
//! ```
//!
//! Writes a few keys in the clear, switches encryption on while the cluster runs through
//! replicated control entries (install a data key wrapped under a key-encryption key, promote it,
//! enforce the cutover), writes more, rotates the key the same way, shows one replica's stored log
//! and applied state, then tampers with one stored entry on one replica: that replica halts at the
//! entry with a typed error while the others keep serving, until repaired. Finally it destroys
//! the first key (refused until every log is compacted into a sealed snapshot) and adds a fourth
//! node that catches up from that snapshot with nothing but the KEK.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use raft_envelope_core::{
    provider::{FileKekProvider, KekId, KeyProvider},
    Algorithm, ClusterId, EntryKind, LayerState, SecretKey,
};
use raft_envelope_openraft::testing::{KvApp, TestCluster};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    println!("raft-envelope on openraft 0.9: a 3-node cluster in one process\n");

    // Every node holds the key-encryption key (KEK). In production it comes from a file only
    // its owner may read (`FileKekProvider::load`) or from a KMS; data keys never do: they travel
    // through the log wrapped under the KEK.
    let kek_id = KekId::new("demo-kek")?;
    let provider: Arc<dyn KeyProvider> =
        Arc::new(FileKekProvider::from_key(kek_id.clone(), SecretKey::generate()?)?);
    let cluster_id = ClusterId::new("demo-cluster")?;

    step(1, "start 3 nodes; the layer is installed but inert (no key, no cutover)");
    let nodes = (0..3)
        .map(|_| (Arc::new(LayerState::new(cluster_id.clone())), Some(provider.clone()), KvApp::default()))
        .collect();
    let cluster = TestCluster::start_with_layer_states(nodes).await?;
    println!("   leader: node {}", cluster.wait_leader(WAIT).await?);
    print_status(&cluster, 1)?;

    step(2, "write a few keys (stored in the clear: encryption is not on yet)");
    for kv in ["user:1=alice", "user:2=bob", "plan:1=free"] {
        put(&cluster, kv).await?;
    }

    step(3, "switch encryption on through the log: install key -> promote -> drain -> enforce");
    let enabled = cluster.enable_encryption(provider.as_ref(), &kek_id, Algorithm::Aes256Gcm).await?;
    println!(
        "   {} active; cutover C = {} (the enforce entry): every payload above it must be an envelope",
        enabled.key_id, enabled.cutover
    );
    print_status(&cluster, 1)?;

    step(4, "write more keys (sealed before they reach the log)");
    for kv in ["card:1=4111-1111-1111-1111", "card:2=5500-0000-0000-0004", "user:1=alice-smith"] {
        put(&cluster, kv).await?;
    }

    step(5, "rotate the data key through the log (install + promote); the old key stays decrypt-only");
    let rotated = cluster.rotate_key(provider.as_ref(), &kek_id, Algorithm::Aes256Gcm).await?;
    println!("   {rotated} is now active");
    put(&cluster, "user:2=bob-jones").await?;
    let last = cluster.last_index()?;
    for id in cluster.ids() {
        cluster.wait_applied(id, last, WAIT).await?;
    }
    print_status(&cluster, 3)?;

    step(6, "node 3's stored log (what its disk holds) and its applied state");
    print_log(&cluster, 3)?;
    print_state(&cluster, 3)?;
    for id in cluster.ids() {
        let leaked = cluster.log_contains(id, b"4111-1111")?;
        println!("   card number in node {id}'s stored log bytes: {}", if leaked { "FOUND" } else { "no" });
    }

    step(7, "tamper: flip one bit of a stored envelope on node 3, before node 3 applies it");
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

    step(8, "the other nodes keep serving");
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

    step(9, "restart node 3 with the same log and KEK: it fails on the same entry again (sticky)");
    cluster.restart_with_provider(3, Some(provider.clone())).await?;
    match cluster.node(3)?.halt.get() {
        Some(halt) => println!("   Raft::new on node 3 failed again: {halt}"),
        None => println!("   node 3 started (unexpected)"),
    }
    println!("   node 3 applied index: {}", cluster.applied_index(3)?);

    step(
        10,
        "repair: restore the entry's bytes from a healthy replica, restart node 3: it resumes and converges",
    );
    if let Some((kind, bytes)) = cluster.read_entry(1, tampered)? {
        cluster.write_entry(3, tampered, kind, bytes)?;
    }
    cluster.restart_with_provider(3, Some(provider.clone())).await?;
    cluster.wait_applied(3, index, WAIT).await?;
    println!(
        "   node 3 applied index: {}; halted: {}",
        cluster.applied_index(3)?,
        cluster.halted(3)?.is_some()
    );
    let same =
        cluster.node(3)?.sm.with_app(|a| a.data.clone()) == cluster.node(1)?.sm.with_app(|a| a.data.clone());
    println!("   node 3 state equals node 1 state: {same}");

    step(11, "destroy the first data key: refused while any log still holds entries sealed under it");
    match cluster.destroy_key(enabled.key_id).await {
        Err(refused) => println!("   refused: {refused}"),
        Ok(_) => println!("   destroyed (unexpected)"),
    }

    step(12, "compact every log into a sealed snapshot (it carries the layer state), then destroy");
    for id in cluster.ids() {
        let at = cluster.compact(id).await?;
        println!("   node {id}: snapshot at index {at}, log purged up to it");
    }
    cluster.destroy_key(enabled.key_id).await?;
    println!("   {} destroyed on every replica", enabled.key_id);
    print_status(&cluster, 1)?;

    step(13, "a new node joins with only the KEK: it gets the sealed snapshot and opens everything");
    let joiner_state = Arc::new(LayerState::new(cluster_id.clone()));
    let joiner = cluster.add_member(joiner_state, Some(provider.clone()), KvApp::default()).await?;
    let index = put(&cluster, "plan:2=team").await?;
    cluster.wait_applied(joiner, index, WAIT).await?;
    let same = cluster.node(joiner)?.sm.with_app(|a| a.data.clone())
        == cluster.node(1)?.sm.with_app(|a| a.data.clone());
    println!("   node {joiner} applied index {index}; its state equals node 1's: {same}");
    print_status(&cluster, joiner)?;

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
    println!("   {:>5}  {:>4}  {:<13}  {:<7}  first bytes", "index", "term", "kind", "key");
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
        println!("   {:>5}  {:>4}  {:<13}  {:<7}  {shown}", e.index, e.term, e.label, key);
    }
    Ok(())
}

fn print_status(cluster: &TestCluster<KvApp>, id: u64) -> Result<(), Box<dyn Error>> {
    // The admin API's status call: what this replica has applied, the same on every replica.
    let Some(raft) = cluster.node(id)?.raft else { return Ok(()) };
    let status = raft.encryption_status()?;
    let cutover = status.cutover.map_or_else(|| "none (inert)".to_string(), |c| c.to_string());
    println!("   encryption status on node {id}: cutover {cutover}");
    for k in &status.keys {
        let last = k.last_sealed_index.map_or_else(|| "-".to_string(), |i| i.to_string());
        // As a share of what one key may seal (2^32 by default), not a raw count.
        let limit = raft.layer_state().map_or(1, |s| s.seal_limit().max(1)) as f64;
        let budget = status
            .budget_remaining
            .get(&k.key_id)
            .map_or_else(|| "-".to_string(), |b| format!("{:.6}%", *b as f64 / limit * 100.0));
        println!(
            "     {:<6} {:<12} {:<12} installed at {:>2}, sealed entries {}, last sealed at {}, budget left {}",
            k.key_id.to_string(),
            format!("{:?}", k.state),
            k.algorithm.to_string(),
            k.installed_at,
            k.sealed_entries,
            last,
            budget
        );
    }
    if status.keys.is_empty() {
        println!("     no keys");
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
