"""The main job, written once: the README's commands, the Dockerfile's install and default
command, CI's install line (``.ci/run``) and the end-to-end MiniLM test
(``tests/e2e/test_minilm_cpu.py``) are made from, or checked against, what is here
(``tests/unit/test_main_job.py``), so none of them drifts from the others.

``--unlabeled`` SST-2 is part of the job: without it ``cpu-int8``'s 3/4-width student keeps
98.7% of the teacher, under the profile's ``min_retention`` of 0.99 (README, "The two
commands"). ``--probe`` SST-2 (with its labels) is what verify's linear probe is fitted and
scored on: ``cpu-int8`` has a ``min_probe_retention`` budget.
"""

from __future__ import annotations

PROFILE = "cpu-int8"
DATA = "stsb"  # folder under the data root
UNLABELED = "sst2"  # its train split's sentences, without their labels
PROBE = "sst2"  # labelled: verify's linear probe on frozen embeddings (fit on train, score dev)
TORCH = "torch==2.13.0"  # pinned first: a CPU build (an unpinned torch pulls CUDA's)
# plots: the report's PNGs; openvino: cpu-int8 measures OpenVINO beside ONNX Runtime
EXTRAS = ("train", "minilm", "plots", "openvino")
# the README's test command and .ci/run: the main job's extras + the tests' own
TEST_EXTRAS = (*EXTRAS, "dev", "serve")
README_DATA_ROOT = "../shared/data"  # ../shared beside the checkout
DOCKER_DATA_ROOT = "/data"  # the Dockerfile's volume
DOCKER_OUT = "/runs/cpu-int8-minilm"


def compress_args(data_root: str) -> list[str]:
    """``kdeploy`` arguments of the main job, data under ``data_root``."""
    return ["compress", "--profile", PROFILE, "--data", f"{data_root}/{DATA}",
            "--unlabeled", f"{data_root}/{UNLABELED}",
            "--probe", f"{data_root}/{PROBE}"]  # fmt: skip


def readme_command() -> str:
    """The command line the README quotes."""
    return " ".join(["kdeploy", *compress_args(README_DATA_ROOT)])


def docker_cmd() -> list[str]:
    """The Dockerfile's ``CMD`` (its ``ENTRYPOINT`` is ``kdeploy``)."""
    return [*compress_args(DOCKER_DATA_ROOT), "--out", DOCKER_OUT]


def extras_spec(extras: tuple[str, ...] = EXTRAS) -> str:
    """``'.[train,minilm,plots,openvino]'`` as pip takes it."""
    return f"'.[{','.join(extras)}]'"
