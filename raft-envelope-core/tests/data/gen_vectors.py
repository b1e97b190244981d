#!/usr/bin/env python3
"""Independent implementation of envelope format v1 (DESIGN.md), used to produce vectors.json.

Written from DESIGN.md alone with the `cryptography` package (OpenSSL), not from the Rust code,
so that `tests/vectors.rs` proves the Rust implementation matches the documented layout.
Run: python3 gen_vectors.py > vectors.json
"""
import json
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

ALGS = {"AES-256-GCM": (1, AESGCM), "AES-256-GCM-SIV": (2, AESGCMSIV)}
PURPOSES = {"raft-payload": 1, "snapshot": 2, "key-wrap": 3, "control": 4}
KEY_A = bytes(range(0x00, 0x20))
KEY_B = bytes(range(0x20, 0x40))


def header(alg, purpose, key_id, proposal_id, nonce):
    return struct.pack(">BBBBIQ", 1, ALGS[alg][0], PURPOSES[purpose], 0, key_id, proposal_id) + nonce


def aad(head, cluster):
    return head + bytes([len(cluster)]) + cluster


def seal(key, alg, purpose, key_id, proposal_id, nonce, cluster, plaintext):
    head = header(alg, purpose, key_id, proposal_id, nonce)
    ct_and_tag = ALGS[alg][1](key).encrypt(nonce, plaintext, aad(head, cluster))
    return head + ct_and_tag


def vector(name, expect, key, alg, purpose, key_id, proposal_id, nonce, cluster, plaintext,
           envelope=None, reason=None, open_purpose=None, open_cluster=None, keys=None):
    env = envelope if envelope is not None else seal(key, alg, purpose, key_id, proposal_id, nonce,
                                                     cluster, plaintext)
    v = {
        "name": name,
        "expect": expect,
        # The keys the opener holds: [key id, algorithm, key hex].
        "keys": keys if keys is not None else [[key_id, alg, key.hex()]],
        "algorithm": alg,
        "purpose": purpose,
        "key_id": key_id,
        "proposal_id": proposal_id,
        "nonce": nonce.hex(),
        "cluster_id": cluster.hex(),
        "plaintext": plaintext.hex(),
        "envelope": env.hex(),
        "open_purpose": open_purpose or purpose,
        "open_cluster_id": (open_cluster if open_cluster is not None else cluster).hex(),
    }
    if reason:
        v["reason"] = reason
    return v


def main():
    n1 = bytes.fromhex("000102030405060708090a0b")
    n2 = bytes.fromhex("fffffffffffffffffffffffe")
    c = b"cluster-1"
    vs = []
    vs.append(vector("gcm_empty_payload", "pass", KEY_A, "AES-256-GCM", "raft-payload", 1, 0, n1, c, b""))
    vs.append(vector("gcm_short_payload", "pass", KEY_A, "AES-256-GCM", "raft-payload", 1, 42, n1, c,
                     b"set x = 1"))
    vs.append(vector("gcm_64_bytes_max_ids", "pass", KEY_B, "AES-256-GCM", "raft-payload", 0xFFFFFFFF,
                     0xFFFFFFFFFFFFFFFF, n2, c, bytes(range(64))))
    vs.append(vector("gcm_empty_cluster_id", "pass", KEY_A, "AES-256-GCM", "raft-payload", 7, 1, n1, b"",
                     b"hello"))
    vs.append(vector("gcm_snapshot_purpose", "pass", KEY_A, "AES-256-GCM", "snapshot", 1, 0, n1, c,
                     b"snapshot bytes"))
    vs.append(vector("siv_short_payload", "pass", KEY_A, "AES-256-GCM-SIV", "raft-payload", 2, 42, n1, c,
                     b"set x = 1"))
    vs.append(vector("siv_1000_bytes", "pass", KEY_B, "AES-256-GCM-SIV", "raft-payload", 3, 9, n2, c,
                     bytes(i % 251 for i in range(1000))))

    good = seal(KEY_A, "AES-256-GCM", "raft-payload", 1, 42, n1, c, b"set x = 1")

    def flip(env, i, bit=0x01):
        b = bytearray(env)
        b[i] ^= bit
        return bytes(b)

    base = dict(key=KEY_A, alg="AES-256-GCM", purpose="raft-payload", key_id=1, proposal_id=42, nonce=n1,
                cluster=c, plaintext=b"set x = 1")
    vs.append(vector("fail_tag_bit_flipped", "fail", envelope=flip(good, len(good) - 1),
                     reason="authentication_failed", **base))
    vs.append(vector("fail_ciphertext_bit_flipped", "fail", envelope=flip(good, 28),
                     reason="authentication_failed", **base))
    vs.append(vector("fail_nonce_bit_flipped", "fail", envelope=flip(good, 16),
                     reason="authentication_failed", **base))
    vs.append(vector("fail_proposal_id_rewritten", "fail", envelope=flip(good, 15),
                     reason="authentication_failed", **base))
    # Key id rewritten to another key the opener also holds: the tag binds the key id.
    vs.append(vector("fail_key_id_rewritten_to_held_key", "fail", envelope=flip(good, 7, 0x03),
                     reason="authentication_failed",
                     keys=[[1, "AES-256-GCM", KEY_A.hex()], [2, "AES-256-GCM", KEY_A.hex()]], **base))
    vs.append(vector("fail_key_id_unknown", "fail", envelope=flip(good, 4, 0x80), reason="unknown_key",
                     **base))
    vs.append(vector("fail_wrong_cluster", "fail", reason="authentication_failed", open_cluster=b"cluster-2",
                     **base))
    vs.append(vector("fail_wrong_purpose", "fail", reason="wrong_purpose", open_purpose="snapshot", **base))
    # Purpose byte rewritten: detected before the tag, but the tag would fail too.
    vs.append(vector("fail_purpose_byte_rewritten", "fail", envelope=flip(good, 2, 0x03),
                     reason="wrong_purpose", **base))
    vs.append(vector("fail_truncated_below_minimum", "fail", envelope=good[:43], reason="malformed", **base))
    vs.append(vector("fail_truncated_tag", "fail", envelope=good[:-1], reason="authentication_failed",
                     **base))
    # The version byte is checked before the length.
    vs.append(vector("fail_short_input_with_other_version", "fail", envelope=bytes([2]) + bytes(9),
                     reason="unsupported_version", **base))
    vs.append(vector("fail_empty_input", "fail", envelope=b"", reason="malformed", **base))
    vs.append(vector("fail_unsupported_version", "fail", envelope=flip(good, 0, 0x03),
                     reason="unsupported_version", **base))
    vs.append(vector("fail_unknown_algorithm", "fail", envelope=flip(good, 1, 0x08),
                     reason="unsupported_algorithm", **base))
    vs.append(vector("fail_algorithm_swapped_to_siv", "fail", envelope=flip(good, 1, 0x03),
                     reason="unsupported_algorithm", **base))
    vs.append(vector("fail_reserved_flags_set", "fail", envelope=flip(good, 3), reason="malformed", **base))
    print(json.dumps({"format": "raft-envelope v1", "vectors": vs}, indent=1))


if __name__ == "__main__":
    main()
