//! The seed inputs of every target (what `corpus/<target>/seed-*` holds): valid inputs made by
//! the library itself, so the fuzzer starts from deep inside each format.

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft_envelope_core::lifecycle::LayerSnapshot;
use raft_envelope_core::ProposalId;
use raft_envelope_examples::{kv, raftrs_engine};
use raft_envelope_raftrs::framing::ContextMarker;

use crate::fixtures;
use crate::history;

/// The seeds of `target` (one of [`crate::TARGETS`]).
///
/// # Panics
/// For a name that is not a target.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "envelope_header" | "envelope_open" => fixtures::envelopes(),
        "control_entry" => {
            let mut out = fixtures::control_entries();
            out.extend(fixtures::switched_on().1.into_iter().map(|(_, entry)| entry));
            out
        }
        "layer_snapshot" => fixtures::layer_snapshots(),
        "integrity_state" => fixtures::layer_snapshots()
            .iter()
            .map(|bytes| {
                let mut snapshot = LayerSnapshot::decode(bytes).expect("a seed layer snapshot");
                snapshot.keys.clear();
                snapshot.cutover = None;
                snapshot.applied_index = None;
                snapshot.encode()[29..].to_vec()
            })
            .collect(),
        "snapshot_frame" => fixtures::snapshot_frames(),
        "raftrs_entry" => raft_entries().iter().map(|e| e.write_to_bytes().expect("encode")).collect(),
        "openraft_payload" => openraft_payloads(),
        "kek_file" => {
            let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
            vec![
                hex.as_bytes().to_vec(),
                format!("{hex}\n").into_bytes(),
                format!("{hex}\r\n").into_bytes(),
                hex[..63].as_bytes().to_vec(),
                format!("{hex}\n\n").into_bytes(),
            ]
        }
        "service_wire" => service_inputs(),
        "inspect" => {
            let mut items = fixtures::envelopes();
            items.extend(fixtures::control_entries());
            items.extend(fixtures::snapshot_frames());
            items.extend(fixtures::layer_snapshots());
            let hex: String = items.iter().take(6).map(|i| to_hex(i) + "\n").collect();
            items.push(hex.into_bytes());
            items
        }
        "apply_history" => history::seed_histories().iter().map(|h| history::encode_steps(h)).collect(),
        other => panic!("no target {other}"),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn raft_entries() -> Vec<Entry> {
    let (_, log) = fixtures::switched_on();
    let envelope = fixtures::envelopes().swap_remove(1);
    let entry = |index: u64, context: Vec<u8>, data: Vec<u8>| {
        let mut e = Entry::default();
        e.index = index;
        e.term = 2;
        e.set_context(context.into());
        e.set_data(data.into());
        e
    };
    let mut conf = entry(4, Vec::new(), vec![0x08, 0x01]);
    conf.set_entry_type(EntryType::EntryConfChangeV2);
    vec![
        entry(1, Vec::new(), Vec::new()),
        entry(2, Vec::new(), b"cleartext".to_vec()),
        entry(3, ContextMarker::envelope(ProposalId(9)).encode(), envelope),
        entry(5, ContextMarker::barrier(ProposalId(10)).encode(), Vec::new()),
        entry(6, ContextMarker::layer_control(ProposalId(11)).encode(), log[2].1.clone()),
        conf,
    ]
}

fn openraft_payloads() -> Vec<Vec<u8>> {
    let envelope = fixtures::envelopes().swap_remove(1);
    let control = fixtures::control_entries().swap_remove(3);
    let payloads = [
        serde_json::json!({ "Cleartext": b"{\"put\":{\"key\":\"a\",\"value\":\"1\"}}".to_vec() }),
        serde_json::json!({ "Envelope": envelope }),
        serde_json::json!("Barrier"),
        serde_json::json!({ "Control": control }),
    ];
    let mut out = Vec::new();
    for json in payloads {
        let payload: raft_envelope_openraft::EnvelopePayload =
            serde_json::from_value(json).expect("a payload's JSON form");
        out.push(serde_json::to_vec(&payload).expect("json"));
        out.push(postcard::to_stdvec(&payload).expect("postcard"));
        let mut entry = crate::bytes::KvEntry::default();
        entry.payload = openraft::EntryPayload::Normal(payload);
        out.push(postcard::to_stdvec(&entry).expect("postcard"));
        out.push(serde_json::to_vec(&entry).expect("json"));
    }
    out
}

fn service_inputs() -> Vec<Vec<u8>> {
    let put = kv::Command::Put { key: "a".into(), value: "1".into() }.encode();
    let mut request =
        format!("POST /kv/a HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", put.len()).into_bytes();
    request.extend_from_slice(&put);
    request.extend_from_slice(b"GET /status?verbose=1&x HTTP/1.1\r\n\r\n");
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgAppend);
    message.to = 2;
    message.from = 1;
    message.set_entries(raft_entries().into());
    let mut map = kv::KvMap::default();
    map.apply(&kv::Command::Put { key: "k".into(), value: "v".into() });
    vec![
        request,
        raftrs_engine::encode_frames(&[message.clone(), Message::default()]),
        put,
        kv::Command::Delete { key: "a".into() }.encode(),
        map.to_bytes(),
    ]
}
