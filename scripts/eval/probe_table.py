"""One table from several sparse_probe.py reports, over the prompt/seed pairs that every report ran.

Usage: python3 scripts/eval/probe_table.py REPORT.json [REPORT.json ...]
Each row is one (report, config): clips with colour and motion right, and for sparse configs the PSNR against
the dense clip of the same report (mean, median, min), the mean latent cosine and the density in sparse calls.
"""

from __future__ import annotations

import json
import os
import statistics
import sys


def load(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)["runs"]


def clip(run: dict) -> tuple[str, int]:
    return run["prompt"], run["seed"]


def main(paths: list[str]) -> None:
    reports = [load(p) for p in paths]
    common = set.intersection(*[{clip(r) for r in runs if r["config"] == "dense"} for runs in reports])
    print(f"{len(common)} clips (prompt, seed) in every report\n")
    print("| report | config | colour+motion right | mean PSNR dB | median | min | mean latent cos | density |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path, runs in zip(paths, reports):
        by_config: dict[str, list[dict]] = {}
        for r in runs:
            if clip(r) in common:
                by_config.setdefault(r["config"], []).append(r)
        for config, rows in by_config.items():
            right = sum(r["analyser"]["colour_ok"] and r["analyser"]["motion_ok"] for r in rows)
            cells = [os.path.basename(path), config, f"{right}/{len(rows)}"]
            if config == "dense":
                cells += ["–"] * 4 + ["1.000"]
            else:
                psnr = [r["psnr_db"] for r in rows]
                cells += [f"{statistics.mean(psnr):.2f}", f"{statistics.median(psnr):.2f}", f"{min(psnr):.2f}",
                          f"{statistics.mean(r['latent_cosine'] for r in rows):.4f}",
                          f"{statistics.mean(r['sparse_call_density'] for r in rows):.3f}"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
