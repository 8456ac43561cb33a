"""GPUs on this machine, found the way Ray finds them: ``CUDA_VISIBLE_DEVICES`` when it is set,
else ``nvidia-smi``.  The GPU model becomes an ``accelerator_type:<model>`` resource, so
``@remote(accelerator_type="H100")`` lands on such a node."""
from __future__ import annotations

import os
import re
import shutil
import subprocess


def detect_gpus():
    """(number of GPUs, model name or None)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = _nvidia_smi_names()
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids), (_model(names[0]) if names else None)
    return len(names), (_model(names[0]) if names else None)


def _nvidia_smi_names():
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _model(name):
    """'NVIDIA H100 80GB HBM3' -> 'H100'; 'Tesla V100-SXM2-16GB' -> 'V100'."""
    for token in re.split(r"[\s\-_]+", name):
        if re.fullmatch(r"[A-Z]{1,3}\d{1,4}[A-Za-z]*", token) and token not in ("NVIDIA", "GPU"):
            return token
    return name.replace(" ", "_")


def accelerator_resource(model):
    return f"accelerator_type:{model}"
