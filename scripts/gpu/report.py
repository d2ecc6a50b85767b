"""Prints one markdown table from the JSON files of one GPU benchmark run: `vdit bench --json`,
scripts/gpu/torch_bench.py and the CUDA kernel harness (attn_table.json). Rows that carry a `stages`
object (`vdit bench pipeline`, `torch_bench.py --pipeline`) are also listed stage by stage in a second
table: imports (process start-up), loading, encode, denoise, decode, write and the total, seconds.

    python3 scripts/gpu/report.py vdit.json torch.json [attn_table.json]
"""
import json
import os
import sys

# REPORT_LABEL_FILES=1: the implementation column also names the JSON file (for runs of one
# implementation under several settings, e.g. scripts/gpu/run_lora.sh).
LABEL_FILES = os.environ.get("REPORT_LABEL_FILES") == "1"

STAGE_KEYS = ("imports_s", "load_s", "encode_s", "denoise_s", "decode_s", "write_s", "total_s")


def seconds(value):
    return "" if value is None else f"{value:.2f}"


def gib(row):
    for key, where in (("peak_gpu_bytes", "GPU"), ("peak_device_bytes", "GPU"), ("peak_host_bytes", "host RSS")):
        if row.get(key):
            return f"{row[key] / 2**30:.1f} GiB {where}"
    return ""


def main(paths):
    lines = ["| stage | implementation | case | shape | median | TFLOP/s | density |", "|---|---|---|---|---|---|---|"]
    staged = []
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
        if LABEL_FILES:  # several runs of one implementation: say which file each row is from
            impl = f"{impl} ({os.path.splitext(os.path.basename(path))[0]})"
        for r in data["rows"]:
            ms = r["median_s"] * 1e3
            shown = f"{ms:.2f} ms" if ms < 1000 else f"{ms / 1e3:.3f} s"
            tf = f"{r['tflops']:.0f}" if r.get("tflops") else ""
            dens = f"{r['density']:.3f}" if r.get("density") is not None else ""
            lines.append(f"| {r['bench']} | {r.get('impl', impl)} | {r['case']} | {r['shape']} | {shown} | {tf} | {dens} |")
            if isinstance(r.get("stages"), dict):
                staged.append((r.get("impl", impl), r))
    if staged:
        lines += ["", "Whole runs, seconds (load = every network load; encode, denoise and decode are compute only;"
                  " write = the wait for the video file after the decode, blank where not measured apart)", "",
                  "| implementation | case | shape | imports | load | encode | denoise | decode | write | total | peak memory |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for impl, r in staged:
            st = r["stages"]
            cells = " | ".join(seconds(st.get(k)) for k in STAGE_KEYS)
            lines.append(f"| {impl} | {r['case']} | {r['shape']} | {cells} | {gib(r)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
