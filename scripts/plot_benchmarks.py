#!/usr/bin/env python3
"""Plots throughput against writers, layer off and on, from the cluster benches' JSON.

Reads target/bench-results/<engine>.json (written by `cargo bench -p raft-envelope-<engine>
--bench cluster`) and writes docs/throughput.svg: one panel per engine and payload size.
No dependencies beyond the Python standard library.
"""
import json
import math
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
W, H = 360, 260  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 60, 20, 40, 45


def panel(x0, y0, title, rows):
    writers = sorted({r["writers"] for r in rows})
    top = max(max(r["off_throughput"], r["on_throughput"]) for r in rows) * 1.15
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(w):
        i = writers.index(w)
        return x0 + PAD_L + (pw * i / max(1, len(writers) - 1))

    def py(v):
        return y0 + PAD_T + ph - ph * v / top

    out = [f'<text x="{x0 + W / 2}" y="{y0 + 20}" text-anchor="middle" font-weight="bold">{title}</text>']
    out.append(f'<line x1="{x0 + PAD_L}" y1="{y0 + PAD_T + ph}" x2="{x0 + PAD_L + pw}" y2="{y0 + PAD_T + ph}" stroke="black"/>')
    out.append(f'<line x1="{x0 + PAD_L}" y1="{y0 + PAD_T}" x2="{x0 + PAD_L}" y2="{y0 + PAD_T + ph}" stroke="black"/>')
    step = 10 ** math.floor(math.log10(top / 2))
    tick = 0
    while tick <= top:
        out.append(f'<text x="{x0 + PAD_L - 5}" y="{py(tick) + 4}" text-anchor="end" font-size="10">{tick:,.0f}</text>')
        out.append(f'<line x1="{x0 + PAD_L}" y1="{py(tick)}" x2="{x0 + PAD_L + pw}" y2="{py(tick)}" stroke="#ddd"/>')
        tick += step * (2 if top / step > 8 else 1)
    for w in writers:
        out.append(f'<text x="{px(w)}" y="{y0 + PAD_T + ph + 15}" text-anchor="middle" font-size="10">{w}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{y0 + H - 8}" text-anchor="middle" font-size="11">concurrent writers</text>')
    for key, colour, label in (("off_throughput", "#888", "layer off"), ("on_throughput", "#c33", "layer on (AES-256-GCM)")):
        pts = " ".join(f"{px(r['writers'])},{py(r[key])}" for r in sorted(rows, key=lambda r: r["writers"]))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for r in rows:
            out.append(f'<circle cx="{px(r["writers"])}" cy="{py(r[key])}" r="3" fill="{colour}"/>')
    out.append(f'<text x="{x0 + PAD_L + 5}" y="{y0 + PAD_T + 10}" font-size="10" fill="#888">— layer off</text>')
    out.append(f'<text x="{x0 + PAD_L + 5}" y="{y0 + PAD_T + 22}" font-size="10" fill="#c33">— layer on</text>')
    return out


def main():
    results = {}
    for path in sorted((ROOT / "target" / "bench-results").glob("*.json")):
        for row in json.loads(path.read_text()):
            results.setdefault((row["engine"], row["payload_len"]), []).append(row)
    if not results:
        raise SystemExit("no results: run the cluster benches first (see BENCHMARKS.md)")
    keys = sorted(results)
    cols = 2
    rows_n = math.ceil(len(keys) / cols)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * rows_n + 30}" font-family="sans-serif">',
             f'<rect width="100%" height="100%" fill="white"/>',
             f'<text x="10" y="{H * rows_n + 20}" font-size="10">proposals per second (median of interleaved rounds), 3-node in-process cluster</text>']
    for i, (engine, size) in enumerate(keys):
        parts += panel((i % cols) * W, (i // cols) * H, f"{engine}, {size} B payloads", results[(engine, size)])
    parts.append("</svg>")
    out = ROOT / "docs" / "throughput.svg"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
