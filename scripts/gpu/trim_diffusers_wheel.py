"""Writes a smaller diffusers wheel for the GPU machine, which has no diffusers and takes at most 64 MiB of
working tree plus carried files per call (the full 0.42.1 wheel is 6.4 MB; this one about 2.2 MB).

Keeps everything the training, probe and reference scripts import (models, schedulers, loaders, utils, the Wan
pipeline and the pipeline base modules) and drops the other pipelines and the modular-pipeline subpackages, whose
imports diffusers makes lazily. Check after a change: PYTHONPATH=<unpacked> python3 -c "from diffusers import
WanPipeline, AutoencoderKLWan, WanTransformer3DModel, UniPCMultistepScheduler".

Usage: python3 scripts/gpu/trim_diffusers_wheel.py FULL.whl .whl/   (then carry .whl, see the device README)
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import zipfile

KEEP_PIPELINES = {"wan"}


def keep(name: str) -> bool:
    parts = name.split("/")
    if parts[0] != "diffusers" or len(parts) < 3:
        return True
    if parts[1] == "pipelines" and len(parts) > 3:
        return parts[2] in KEEP_PIPELINES
    if parts[1] == "modular_pipelines" and len(parts) > 3:
        return False
    return True


def main(full: str, out_dir: str) -> None:
    out = os.path.join(out_dir, os.path.basename(full))
    if os.path.abspath(out) == os.path.abspath(full):
        sys.exit("write the trimmed wheel to another folder than the full one")
    tmp = out + ".tmp"
    records = []
    with zipfile.ZipFile(full) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info.filename == record_name or not keep(info.filename):
                continue
            data = src.read(info)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{info.filename},sha256={digest},{len(data)}")
            dst.writestr(info.filename, data)
        records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(records) + "\n")
    os.replace(tmp, out)
    print(f"{out}: {os.path.getsize(out) / 1e6:.2f} MB, {len(records) - 1} files")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
