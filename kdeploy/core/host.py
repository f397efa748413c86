"""What machine this is: CPU model, GPU (through nvidia-smi, no CUDA library), cores,
platform, Python and ONNX Runtime versions. Recorded beside every measurement."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from kdeploy.core.deps import version_of


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "gpu": gpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": version_of("onnxruntime"),
    }


def gpu_name() -> str | None:
    """The GPU(s) nvidia-smi reports, when there is one (no CUDA library needed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return "; ".join(out.stdout.strip().splitlines()) or None
