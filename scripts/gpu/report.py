"""Prints one markdown table from the JSON files of one GPU benchmark run: `vdit bench --json`,
scripts/gpu/torch_bench.py and the CUDA kernel harness (attn_table.json).

    python3 scripts/gpu/report.py vdit.json torch.json [attn_table.json]
"""
import json
import sys


def main(paths):
    lines = ["| stage | implementation | case | shape | median | TFLOP/s | density |", "|---|---|---|---|---|---|---|"]
    for path in paths:
        try:
            data = json.load(open(path))
        except (OSError, ValueError) as err:
            lines.append(f"| (missing {path}: {err}) | | | | | | |")
            continue
        if "checks_pass" in data:  # kernel harness: rows of [name, ms, tflops]
            for name, ms, tf in data["rows"]:
                lines.append(f"| attention kernel | harness (CuPy) | {name} | B1 H12 L32760 D128 | {ms:.2f} ms | {tf:.0f} | |")
            continue
        impl = data.get("impl", "vdit")
        for r in data["rows"]:
            ms = r["median_s"] * 1e3
            shown = f"{ms:.2f} ms" if ms < 1000 else f"{ms / 1e3:.3f} s"
            tf = f"{r['tflops']:.0f}" if r.get("tflops") else ""
            dens = f"{r['density']:.3f}" if r.get("density") is not None else ""
            lines.append(f"| {r['bench']} | {impl} | {r['case']} | {r['shape']} | {shown} | {tf} | {dens} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
