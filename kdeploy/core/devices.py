"""What each target device can do: one table, used by the profile validator and the build.

Sources: NVIDIA's compute-capability tables (A100 = SM 8.0, H100 = SM 9.0, T4 = SM 7.5,
Jetson AGX Orin = SM 8.7), the TensorRT developer guide (FP8 needs SM 8.9+, 2:4 structured
sparsity runs on the sparse tensor cores of SM 8.0+, DLA runs FP16/INT8 only and exists on
Jetson/DRIVE parts: Orin has two DLA cores).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceCaps:
    name: str
    gpu: bool
    sm: tuple[int, int] | None  # CUDA compute capability
    precisions: frozenset[str]  # target.precision values the device runs natively
    sparse_tensor_cores: bool  # 2:4 structured sparsity (SPARSE_WEIGHTS) is accelerated
    dla_cores: int  # Deep Learning Accelerator cores (Jetson)
    dla_precisions: frozenset[str] = frozenset()

    @property
    def sm_str(self) -> str:
        return f"SM {self.sm[0]}.{self.sm[1]}" if self.sm else "CPU"


_F = frozenset
DEVICES: dict[str, DeviceCaps] = {
    "cpu": DeviceCaps("cpu", False, None, _F({"fp32", "fp16", "int8"}), False, 0),
    "t4": DeviceCaps("t4", True, (7, 5), _F({"fp32", "fp16", "int8"}), False, 0),
    "a100": DeviceCaps("a100", True, (8, 0), _F({"fp32", "fp16", "int8"}), True, 0),
    "orin": DeviceCaps(
        "orin", True, (8, 7), _F({"fp32", "fp16", "int8"}), True, 2, _F({"fp16", "int8"})
    ),
    "h100": DeviceCaps("h100", True, (9, 0), _F({"fp32", "fp16", "int8", "fp8"}), True, 0),
}

# the minimum compute capability per precision, for error messages
_NEEDS = {"fp8": "FP8 tensor cores, SM 8.9+"}


def caps(device: str) -> DeviceCaps:
    return DEVICES[device]


def _with(pred) -> str:
    return ", ".join(d.name for d in DEVICES.values() if pred(d)) or "none"


def target_problems(
    device: str, precision: str, dla_core: int | None, sparsify: bool, runtime: str
) -> list[str]:
    """Everything the profile asks for that the device lacks (empty when it fits)."""
    d = caps(device)
    out: list[str] = []
    if precision not in d.precisions:
        out.append(
            f"device {device} ({d.sm_str}) cannot run precision {precision}: it needs "
            f"{_NEEDS.get(precision, 'another device')}; devices with it: "
            f"{_with(lambda c: precision in c.precisions)}"
        )
    if dla_core is not None:
        if d.dla_cores == 0:
            out.append(
                f"device {device} has no DLA (dla_core is for {_with(lambda c: c.dla_cores)}); "
                "remove target.dla_core"
            )
        elif dla_core >= d.dla_cores:
            out.append(f"device {device} has DLA cores 0..{d.dla_cores - 1}, not {dla_core}")
        elif precision not in d.dla_precisions:
            out.append(
                f"the DLA runs {'/'.join(sorted(d.dla_precisions))} only, not {precision}; "
                "set target.precision to int8 or fp16, or remove target.dla_core"
            )
        if runtime != "trt":
            out.append("target.dla_core needs runtime 'trt' (the DLA is programmed by TensorRT)")
    if sparsify and d.gpu and not d.sparse_tensor_cores:
        out.append(
            f"device {device} ({d.sm_str}) has no sparse tensor cores: 2:4 sparsity needs "
            f"SM 8.0+ ({_with(lambda c: c.sparse_tensor_cores)}); set sparsify.enabled: false"
        )
    return out
