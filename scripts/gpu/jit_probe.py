#!/usr/bin/env python3
"""How long the driver takes to JIT-compile candle's PTX modules, one after another in one process against one
process per module at once, each with an empty JIT cache (CUDA_CACHE_PATH), then once more with the cache filled.

The question it answers: a machine's first vdit run waits ~13 s for the driver to compile candle's kernels inside
one CUDA context (NOTES.md, v11: threads of one process did not compile in parallel). Do separate processes?

    python3 scripts/gpu/jit_probe.py DIR_OF_PTX [--out FILE.json]
    python3 scripts/gpu/jit_probe.py --one FILE.ptx     (one module in this process; prints its seconds)

Only ctypes and libcuda: no CUDA toolkit or PyTorch needed.
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time


def cuda():
    lib = ctypes.CDLL("libcuda.so.1")

    def check(rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: CUresult {rc}")

    check(lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return lib, check


def load_seconds(lib, check, path):
    """Seconds cuModuleLoadData takes on the PTX text in `path`."""
    with open(path, "rb") as f:
        image = f.read() + b"\0"
    module = ctypes.c_void_p()
    start = time.perf_counter()
    check(lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(image)), f"cuModuleLoadData {path}")
    return time.perf_counter() - start


def serial(paths):
    """Each module in turn in this process (a child, so its context starts clean)."""
    code = (
        "import json,sys; sys.path.insert(0, %r); import jit_probe as j; lib, check = j.cuda(); "
        "print(json.dumps({p: j.load_seconds(lib, check, p) for p in sys.argv[1:]}))" % os.path.dirname(__file__)
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(out.stdout)


def parallel(paths):
    """One process per module, all at once."""
    start = time.perf_counter()
    procs = [
        (p, subprocess.Popen([sys.executable, __file__, "--one", p], stdout=subprocess.PIPE, text=True))
        for p in paths
    ]
    each = {}
    for p, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{p}: exit {proc.returncode}")
        each[p] = float(out.strip())
    return time.perf_counter() - start, each


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--one")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.one:
        lib, check = cuda()
        print(load_seconds(lib, check, args.one))
        return
    paths = sorted(os.path.join(args.dir, n) for n in os.listdir(args.dir) if n.endswith(".ptx"))
    rows = []
    for cache, how, fn in [
        ("/tmp/jit_serial", "serial, empty cache", serial),
        ("/tmp/jit_parallel", "one process each, empty cache", parallel),
        ("/tmp/jit_parallel", "serial, cache filled by the parallel run", serial),
    ]:
        if how.endswith("empty cache"):
            shutil.rmtree(cache, ignore_errors=True)
        os.environ["CUDA_CACHE_PATH"] = cache
        wall, each = fn(paths)
        row = {"how": how, "wall_s": wall, "modules_s": {os.path.basename(p): s for p, s in each.items()}}
        rows.append(row)
        print(f"{how}: wall {wall:.2f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in row["modules_s"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
