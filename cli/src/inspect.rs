//! What stored bytes are, from their public parts only: [`inspect`].

use raft_envelope_core::lifecycle::{KeyState, LayerSnapshot};
use raft_envelope_core::wire::{
    is_clear_control_entry, is_layer_snapshot, ControlCommand, EnvelopeHeader, SnapshotHeader,
    LAYER_SNAPSHOT_MAGIC, OVERHEAD,
};
use serde_json::{json, Value};

/// What one item is.
#[derive(Debug)]
enum Kind {
    /// An envelope (a payload, a sealed control entry, a snapshot body, a wrapped key).
    Envelope { len: usize, header: EnvelopeHeader },
    /// A control entry in the clear.
    Control { len: usize, command: ControlCommand },
    /// A snapshot frame.
    Snapshot { len: usize, header: SnapshotHeader, body: Option<EnvelopeHeader>, body_len: usize },
    /// A layer state (`LayerSnapshot::encode`).
    Layer { len: usize, layer: LayerSnapshot },
    /// None of the layer's formats: cleartext, another format, or damaged bytes.
    Unknown { len: usize, why: String },
}

/// What one stored item is, from its public parts only ([`inspect`]).
#[derive(Debug)]
pub struct Report(Kind);

impl Report {
    /// True when the bytes were none of the layer's formats (cleartext, another format, damage).
    pub fn is_unknown(&self) -> bool {
        self.0.is_unknown()
    }

    /// The report as one JSON object (`kind`: `envelope`, `control`, `snapshot`, `layer_state`,
    /// `unknown`).
    pub fn to_json(&self) -> Value {
        self.0.to_json()
    }

    /// The report as one line of text; item `n` of `total` (numbered when `total > 1`).
    pub fn to_text(&self, n: usize, total: usize) -> String {
        self.0.to_text(n, total)
    }
}

/// What `bytes` are: an envelope's header, a control entry's command, a snapshot frame's header,
/// a layer state, or unknown. Never opens anything; never reports payload bytes, ciphertext or
/// wrapped keys.
pub fn inspect(bytes: &[u8]) -> Report {
    Report(classify(bytes))
}

/// Reads `bytes` as each of the layer's formats, most specific first (their magics differ; an
/// envelope starts with its version byte).
fn classify(bytes: &[u8]) -> Kind {
    let len = bytes.len();
    if is_clear_control_entry(bytes) {
        return match ControlCommand::decode(bytes) {
            Ok(command) => Kind::Control { len, command },
            Err(e) => Kind::Unknown { len, why: format!("a control entry that does not decode: {e}") },
        };
    }
    if is_layer_snapshot(bytes) {
        return match SnapshotHeader::read(bytes) {
            Ok(header) => {
                let body_len = body_len(bytes);
                let body =
                    header.sealed_under.and_then(|_| EnvelopeHeader::parse(&bytes[len - body_len..]).ok());
                Kind::Snapshot { len, header, body, body_len }
            }
            Err(e) => Kind::Unknown { len, why: format!("a snapshot frame that does not decode: {e}") },
        };
    }
    if bytes.starts_with(&LAYER_SNAPSHOT_MAGIC) {
        return match LayerSnapshot::decode(bytes) {
            Ok(layer) => Kind::Layer { len, layer },
            Err(e) => Kind::Unknown { len, why: format!("a layer state that does not decode: {e}") },
        };
    }
    match EnvelopeHeader::parse(bytes) {
        Ok(header) => Kind::Envelope { len, header },
        Err(e) => Kind::Unknown {
            len,
            why: format!("not an envelope ({e}), control entry or snapshot: cleartext or another format"),
        },
    }
}

/// The length of a snapshot frame's body: after the 22-byte fixed header and the layer section.
fn body_len(frame: &[u8]) -> usize {
    let layer_len = frame.get(18..22).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    frame.len().saturating_sub(22 + layer_len)
}

/// One item per non-blank line of hex text.
pub fn hex_lines(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "--hex input is not text".to_owned())?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let digits: Vec<u8> = line.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            if digits.len() % 2 != 0 {
                return Err(format!("line {}: an odd number of hex digits", n + 1));
            }
            digits
                .chunks(2)
                .map(|pair| {
                    let digit =
                        |b: u8| char::from(b).to_digit(16).ok_or_else(|| format!("line {}: not hex", n + 1));
                    Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
                })
                .collect()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn state(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::DecryptOnly => "decrypt-only",
        KeyState::Destroyed => "destroyed",
        _ => "unknown",
    }
}

fn envelope_json(len: usize, h: &EnvelopeHeader) -> Value {
    json!({
        "algorithm": h.algorithm.to_string(),
        "purpose": h.purpose.to_string(),
        "key_id": h.key_id.0,
        "proposal_id": h.proposal_id.0,
        "nonce": hex(&h.nonce),
        "len": len,
        "plaintext_len": len.saturating_sub(OVERHEAD),
    })
}

fn envelope_text(len: usize, h: &EnvelopeHeader) -> String {
    format!(
        "envelope: {} bytes, purpose {}, {}, key {}, proposal {}, nonce {}, {} bytes sealed",
        len,
        h.purpose,
        h.algorithm,
        h.key_id.0,
        h.proposal_id.0,
        hex(&h.nonce),
        len.saturating_sub(OVERHEAD)
    )
}

fn command_json(command: &ControlCommand) -> Value {
    let mut v = json!({ "command": command.name() });
    match command {
        ControlCommand::InstallKey(install) => {
            v["key_id"] = json!(install.key_id.0);
            v["algorithm"] = json!(install.algorithm.to_string());
            v["kek_id"] = json!(install.kek_id.as_str());
            v["wrapped_key_len"] = json!(install.wrapped_key.as_bytes().len());
        }
        ControlCommand::Checkpoint { through, digest } => {
            v["through"] = json!(through);
            v["digest"] = json!(hex(digest));
        }
        other => {
            if let Some(key) = other.key_id() {
                v["key_id"] = json!(key.0);
            }
        }
    }
    v
}

fn layer_json(layer: &LayerSnapshot) -> Value {
    let keys: Vec<Value> = layer
        .keys
        .iter()
        .map(|k| {
            json!({
                "key_id": k.key_id.0,
                "state": state(k.state),
                "algorithm": k.algorithm.to_string(),
                "kek_id": k.kek_id.as_str(),
                "installed_at": k.installed_at,
                "sealed_entries": k.sealed_entries,
                "last_sealed_index": k.last_sealed_index,
                "wrapped_key_len": k.wrapped_key.as_ref().map(|w| w.as_bytes().len()),
            })
        })
        .collect();
    let i = &layer.integrity;
    json!({
        "cutover": layer.cutover,
        "applied_index": layer.applied_index,
        "active_key": layer.active_key().map(|k| k.0),
        "keys": keys,
        "integrity": {
            "digest": i.digest().map(|d| hex(&d)),
            "checkpointed_through": i.checkpointed_through(),
            "sessions": i.sessions(),
            "remembered_envelopes": i.remembered(),
        },
    })
}

fn layer_text(layer: &LayerSnapshot) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let mut out = format!(
        "  cutover {}, applied index {}, active key {}\n",
        opt(layer.cutover),
        opt(layer.applied_index),
        layer.active_key().map_or_else(|| "none".to_owned(), |k| k.0.to_string())
    );
    for k in &layer.keys {
        out.push_str(&format!(
            "  key {}: {}, {}, KEK {}, installed at {}, {} entries sealed (last at {})\n",
            k.key_id.0,
            state(k.state),
            k.algorithm,
            k.kek_id.as_str().escape_default(),
            k.installed_at,
            k.sealed_entries,
            opt(k.last_sealed_index)
        ));
    }
    let i = &layer.integrity;
    out.push_str(&format!(
        "  integrity: digest {}, checkpointed through {}, {} sessions, {} envelopes remembered",
        i.digest().map_or_else(|| "unknown".to_owned(), |d| hex(&d)),
        opt(i.checkpointed_through()),
        i.sessions(),
        i.remembered()
    ));
    out
}

impl Kind {
    /// True when the bytes were none of the layer's formats.
    fn is_unknown(&self) -> bool {
        matches!(self, Kind::Unknown { .. })
    }

    /// The report as one JSON object.
    fn to_json(&self) -> Value {
        match self {
            Kind::Envelope { len, header } => {
                let mut v = envelope_json(*len, header);
                v["kind"] = json!("envelope");
                v
            }
            Kind::Control { len, command } => {
                let mut v = command_json(command);
                v["kind"] = json!("control");
                v["len"] = json!(len);
                v
            }
            Kind::Snapshot { len, header, body, body_len } => json!({
                "kind": "snapshot",
                "len": len,
                "last_index": header.last_index,
                "sealed_under": header.sealed_under.map(|k| k.0),
                "body": body.as_ref().map_or_else(|| json!({ "clear": true, "len": body_len }), |h| envelope_json(*body_len, h)),
                "layer": layer_json(&header.layer),
            }),
            Kind::Layer { len, layer } => {
                let mut v = layer_json(layer);
                v["kind"] = json!("layer_state");
                v["len"] = json!(len);
                v
            }
            Kind::Unknown { len, why } => json!({ "kind": "unknown", "len": len, "why": why }),
        }
    }

    /// The report as text; `n` of `total` items.
    fn to_text(&self, n: usize, total: usize) -> String {
        let prefix = if total > 1 { format!("#{n} ") } else { String::new() };
        let body = match self {
            Kind::Envelope { len, header } => envelope_text(*len, header),
            Kind::Control { len, command } => {
                let v = command_json(command);
                let fields: Vec<String> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| *k != "command")
                    // Strings (a KEK id) come from the log: escaped, so they cannot forge lines.
                    .map(|(k, v)| {
                        format!(
                            "{k} {}",
                            v.as_str().map_or_else(|| v.to_string(), |s| s.escape_default().to_string())
                        )
                    })
                    .collect();
                format!("control entry (clear): {} bytes, {} {}", len, command.name(), fields.join(", "))
            }
            Kind::Snapshot { len, header, body, body_len } => {
                let body = match body {
                    Some(h) => format!("sealed body: {}", envelope_text(*body_len, h)),
                    None => format!("clear body: {body_len} bytes (an inert layer state)"),
                };
                format!(
                    "snapshot frame: {} bytes, last index {}\n  {}\n{}",
                    len,
                    header.last_index,
                    body,
                    layer_text(&header.layer)
                )
            }
            Kind::Layer { len, layer } => format!("layer state: {len} bytes\n{}", layer_text(layer)),
            Kind::Unknown { len, why } => format!("unknown: {len} bytes, {why}"),
        };
        format!("{prefix}{body}")
    }
}
