//! Targets over plain bytes: one function per decoder that reads untrusted input.
//!
//! Every function must return for every input (no panic, no abort, no unbounded allocation) and
//! panics only when an invariant of the format breaks: a decoded value that does not encode back
//! to what was read, two readers of the same bytes that disagree, an error that shows secret
//! bytes.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::OnceLock;

use protobuf::Message as _;
use raft::eraftpb::Entry;
use raft_envelope_core::lifecycle::LayerSnapshot;
use raft_envelope_core::provider::{FileKekProvider, KekId};
use raft_envelope_core::wire::{
    is_clear_control_entry, is_layer_snapshot, ControlCommand, EnvelopeHeader, Purpose, SnapshotHeader,
    CONTROL_MAGIC, HEADER_LEN, LAYER_SNAPSHOT_MAGIC, MAX_CONTROL_ENTRY_LEN, OVERHEAD,
};
use raft_envelope_core::{ApplyGate, Cutover, EntryKind, LayerState, PayloadUnwrapper};
use raft_envelope_examples::{http, kv, raftrs_engine};
use raft_envelope_openraft::{EnvelopePayload, Sealed};
use raft_envelope_raftrs::framing::{self, ContextMarker};

use crate::fixtures::{self, block_on};

/// `EnvelopeHeader::parse`: total, and a parsed header is exactly the first 28 bytes.
pub fn envelope_header(data: &[u8]) {
    match EnvelopeHeader::parse(data) {
        Ok(header) => {
            assert!(data.len() >= OVERHEAD, "a header parsed from {} bytes", data.len());
            assert_eq!(&header.to_bytes()[..], &data[..HEADER_LEN], "header does not encode back");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Opening an envelope under every purpose, three ways (`open_for`, `open_into`, `open_owned`):
/// they agree; only a well-formed header of that purpose opens; the plaintext is the envelope
/// less its overhead.
pub fn envelope_open(data: &[u8]) {
    let cipher = fixtures::cipher();
    let header = EnvelopeHeader::parse(data);
    for purpose in [Purpose::RaftPayload, Purpose::Snapshot, Purpose::KeyWrap, Purpose::Control] {
        let opened = cipher.open_for(purpose, data);
        if let Ok(plain) = &opened {
            let header = header.as_ref().expect("an envelope opened without a readable header");
            assert_eq!(header.purpose, purpose, "opened under another purpose");
            assert_eq!(plain.len() + OVERHEAD, data.len());
        }
        if purpose == Purpose::RaftPayload {
            let mut out = vec![0xEE; 7];
            let into = cipher.open_into(data, &mut out);
            assert_eq!(into.is_ok(), opened.is_ok(), "open_into and open_for disagree");
            let owned = cipher.open_owned(data.to_vec());
            assert_eq!(owned.is_ok(), opened.is_ok(), "open_owned and open_for disagree");
            if let (Ok(plain), Ok(owned)) = (&opened, owned) {
                assert_eq!(&out, plain);
                assert_eq!(&owned, plain);
            }
        }
    }
}

/// `ControlCommand::decode`: total, bounded, and a decoded command encodes back to the same
/// bytes (one encoding per command); applying the bytes as a clear control entry on a fresh
/// layer state never panics and leaves nothing behind when it fails.
pub fn control_entry(data: &[u8]) {
    assert_eq!(is_clear_control_entry(data), data.starts_with(&CONTROL_MAGIC));
    if let Ok(command) = ControlCommand::decode(data) {
        assert!(data.len() <= MAX_CONTROL_ENTRY_LEN, "a {}-byte control entry decoded", data.len());
        assert_eq!(command.encode(), data, "control entry does not encode back");
    }
    let state = LayerState::new(fixtures::cluster());
    let before = state.snapshot();
    let _ = block_on(state.prefetch(data, fixtures::kek()));
    if state.apply_control(1, data).is_err() {
        assert_eq!(state.snapshot(), before, "a control entry that halted changed the layer state");
    }
}

/// `LayerSnapshot::decode` (the keys and, in version 2, the integrity section: replay windows,
/// digest chain, last checkpoint): total; a decoded snapshot round-trips, and a version 2
/// snapshot encodes back to exactly its bytes. Restoring it onto a fresh layer state either
/// succeeds or changes nothing.
pub fn layer_snapshot(data: &[u8]) {
    let Ok(snapshot) = LayerSnapshot::decode(data) else { return };
    let encoded = snapshot.encode();
    let again = LayerSnapshot::decode(&encoded).expect("an encoded layer snapshot decodes");
    assert_eq!(again, snapshot, "layer snapshot does not round-trip");
    if data.get(8) == Some(&2) {
        assert_eq!(encoded, data, "a version 2 layer snapshot does not encode back to its bytes");
    }
    let state = LayerState::new(fixtures::cluster());
    let before = state.snapshot();
    match block_on(state.restore_persisted(data, fixtures::kek())) {
        Ok(()) => assert_eq!(state.snapshot().applied_index, snapshot.applied_index),
        Err(_) => assert_eq!(state.snapshot(), before, "a refused restore changed the layer state"),
    }
}

/// The integrity section of a layer snapshot (`DESIGN.md` §11.4) on its own: the input follows
/// a valid version 2 header with no keys, so every byte lands in the replay-window and
/// checkpoint decoder.
pub fn integrity_state(data: &[u8]) {
    let mut snapshot = Vec::with_capacity(29 + data.len());
    snapshot.extend_from_slice(&LAYER_SNAPSHOT_MAGIC);
    snapshot.push(2);
    snapshot.extend_from_slice(&u64::MAX.to_be_bytes()); // no cutover
    snapshot.extend_from_slice(&u64::MAX.to_be_bytes()); // no applied index
    snapshot.extend_from_slice(&0u32.to_be_bytes()); // no keys
    snapshot.extend_from_slice(data);
    layer_snapshot(&snapshot);
}

/// A snapshot frame (`DESIGN.md` §10.10) installed on a fresh replica: the header reader and the
/// installer agree; an install that fails changes nothing; one that succeeds hands over no more
/// bytes than the frame held and restores the frame's layer section.
pub fn snapshot_frame(data: &[u8]) {
    let header = SnapshotHeader::read(data);
    let last_index = header.as_ref().map_or(0, |h| h.last_index);
    let state = LayerState::new(fixtures::cluster());
    let before = state.snapshot();
    let _ = block_on(state.prefetch_sealed_snapshot(data, fixtures::kek()));
    match state.install_snapshot(last_index, data) {
        Ok(user) => {
            let header = header.expect("a frame installed whose header does not read");
            assert!(user.len() <= data.len());
            assert_eq!(state.snapshot().cutover, header.layer.cutover);
            assert_eq!(state.active_key(), header.layer.active_key());
        }
        Err(_) => assert_eq!(state.snapshot(), before, "a refused snapshot changed the layer state"),
    }
}

/// A raft-rs `Entry` as it arrives from a peer or the log store: decoded, classified by the
/// adapter's framing, and decided by a gate with cutover 0. The classifiers agree with each
/// other; a context marker encodes back; above the cutover nothing classified as cleartext is
/// handed on, and nothing classified as an envelope is handed on unopened.
pub fn raftrs_entry(data: &[u8]) {
    if let Some(Ok(marker)) = ContextMarker::decode(data) {
        assert_eq!(marker.encode(), data, "context marker does not encode back");
    }
    let Ok(entry) = Entry::parse_from_bytes(data) else { return };
    let kind = framing::classify(&entry);
    if framing::is_layer_control(&entry) || framing::is_barrier(&entry) {
        assert_eq!(kind, EntryKind::Control);
    }
    if framing::is_barrier(&entry) {
        assert!(entry.get_data().is_empty());
    }
    let _ = framing::marker_proposal_id(&entry);
    let gate = enforcing_gate();
    let index = entry.index.max(1);
    match gate.decide(index, kind, entry.get_data()) {
        Ok(decision) => {
            assert_ne!(kind, EntryKind::Cleartext, "cleartext handed on above the cutover");
            if kind == EntryKind::Envelope {
                assert_eq!(decision.as_bytes().len() + OVERHEAD, entry.get_data().len());
                assert_eq!(
                    fixtures::cipher().open(entry.get_data()).ok().as_deref(),
                    Some(decision.as_bytes()),
                    "an envelope handed on is not its opened plaintext"
                );
            }
        }
        Err(halt) => assert_eq!(halt.index, index),
    }
}

fn enforcing_gate() -> &'static ApplyGate {
    static GATE: OnceLock<ApplyGate> = OnceLock::new();
    GATE.get_or_init(|| {
        ApplyGate::new(std::sync::Arc::new(Cutover::at(0)))
            .with_unwrapper(std::sync::Arc::new(fixtures::cipher().clone()))
    })
}

/// The example service's openraft log entry.
pub type KvEntry = openraft::Entry<Sealed<raft_envelope_examples::openraft_engine::KvConfig>>;

/// openraft's payload as the log store (postcard) and the network (JSON) decode it, alone and
/// inside an entry: a decoded payload's kind, bytes and key id agree, and it round-trips.
pub fn openraft_payload(data: &[u8]) {
    let decoded = [postcard::from_bytes::<EnvelopePayload>(data).ok(), serde_json::from_slice(data).ok()];
    for payload in decoded.into_iter().flatten() {
        check_payload(&payload);
        let bytes = postcard::to_stdvec(&payload).expect("postcard encodes a payload");
        assert_eq!(postcard::from_bytes::<EnvelopePayload>(&bytes).ok(), Some(payload.clone()));
        let json = serde_json::to_vec(&payload).expect("JSON encodes a payload");
        assert_eq!(serde_json::from_slice::<EnvelopePayload>(&json).ok(), Some(payload));
    }
    if let Ok(entry) = postcard::from_bytes::<KvEntry>(data) {
        if let openraft::EntryPayload::Normal(payload) = &entry.payload {
            check_payload(payload);
        }
        let bytes = postcard::to_stdvec(&entry).expect("postcard encodes an entry");
        let again = postcard::from_bytes::<KvEntry>(&bytes).expect("an encoded entry decodes");
        assert_eq!(again.log_id, entry.log_id);
    }
    if let Ok(entry) = serde_json::from_slice::<KvEntry>(data) {
        if let openraft::EntryPayload::Normal(payload) = &entry.payload {
            check_payload(payload);
        }
    }
}

fn check_payload(payload: &EnvelopePayload) {
    let kind = payload.kind();
    if payload.is_layer_control() {
        assert_eq!(kind, EntryKind::Control);
    }
    let key = payload.key_id();
    if key.is_some() {
        assert!(matches!(kind, EntryKind::Envelope | EntryKind::Control));
        assert_eq!(EnvelopeHeader::parse(payload.as_bytes()).ok().map(|h| h.key_id), key);
    }
    let _ = format!("{payload:?} {payload}");
}

/// The file-KEK reader, through `FileKekProvider::load` on a real file holding the input
/// (mode 0600): it accepts exactly 64 hex digits with an optional `\n` or `\r\n`, and no error
/// shows the file's contents.
pub fn kek_file(data: &[u8]) {
    let path = kek_path();
    write_private(path, data);
    let loaded = FileKekProvider::load(KekId::new("kek-file").expect("kek id"), path);
    let digits = data.strip_suffix(b"\r\n").or_else(|| data.strip_suffix(b"\n")).unwrap_or(data);
    let well_formed = digits.len() == 64 && digits.iter().all(u8::is_ascii_hexdigit);
    match loaded {
        Ok(provider) => {
            assert!(well_formed, "a KEK file that is not 64 hex digits loaded");
            let shown = format!("{provider:?}");
            assert!(!contains(shown.as_bytes(), digits), "Debug shows the KEK");
        }
        Err(e) => {
            assert!(!well_formed, "a well-formed KEK file was refused: {e}");
            // Key material is hex: no 16 hex digits of the file may show (other text may, as
            // the file could hold anything, the error's own words included).
            for shown in [e.to_string(), format!("{e:?}")] {
                for run in digits.windows(16).filter(|w| w.iter().all(u8::is_ascii_hexdigit)) {
                    assert!(!contains(shown.as_bytes(), run), "an error shows the KEK file's contents");
                }
            }
        }
    }
}

fn kek_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        dir.join(format!("raft-envelope-fuzz-kek-{}", std::process::id()))
    })
}

fn write_private(path: &std::path::Path, data: &[u8]) {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).expect("a private scratch file");
    file.write_all(data).expect("write the scratch file");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the example service reads from its peers and clients: HTTP requests (one after another
/// on a kept-alive connection), raft-rs message frames, KV commands and KV snapshots. Decoded
/// values round-trip; a body is never larger than the limit.
pub fn service_wire(data: &[u8]) {
    let mut reader = Cursor::new(data);
    for _ in 0..16 {
        match http::read_request(&mut reader) {
            Ok(Some(request)) => assert!(request.body.len() <= http::MAX_BODY),
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(messages) = raftrs_engine::decode_frames(data) {
        let again = raftrs_engine::decode_frames(&raftrs_engine::encode_frames(&messages))
            .expect("encoded frames decode");
        assert_eq!(again, messages, "raft-rs frames do not round-trip");
    }
    if let Some(command) = kv::Command::decode(data) {
        assert_eq!(kv::Command::decode(&command.encode()), Some(command), "KV command does not round-trip");
    }
    if let Ok(map) = kv::KvMap::from_bytes(data) {
        let again = kv::KvMap::from_bytes(&map.to_bytes()).expect("an encoded KV map decodes");
        assert_eq!(again.len(), map.len());
    }
}

/// The operator CLI's `inspect` over a file's bytes and over `--hex` text: total, and its report
/// never shows an envelope's ciphertext.
pub fn inspect(data: &[u8]) {
    let report = raft_envelope_cli::inspect::inspect(data);
    let text = report.to_text(1, 1);
    let json = report.to_json().to_string();
    if EnvelopeHeader::parse(data).is_ok() && !is_layer_snapshot(data) {
        // 16 bytes of ciphertext (or tag), in hex either case: never in the report.
        let body = &data[HEADER_LEN..HEADER_LEN + 16];
        for hex in [to_hex(body, b"0123456789abcdef"), to_hex(body, b"0123456789ABCDEF")] {
            for shown in [&text, &json] {
                assert!(!contains(shown.as_bytes(), hex.as_bytes()), "inspect shows ciphertext bytes");
            }
        }
    }
    if let Ok(items) = raft_envelope_cli::inspect::hex_lines(data) {
        for item in items.iter().take(8) {
            let _ = raft_envelope_cli::inspect::inspect(item).to_text(1, items.len());
        }
    }
}

fn to_hex(bytes: &[u8], digits: &[u8; 16]) -> String {
    bytes
        .iter()
        .flat_map(|b| [digits[usize::from(b >> 4)] as char, digits[usize::from(b & 15)] as char])
        .collect()
}
