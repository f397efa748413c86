"""One main job: the README's commands, the Dockerfile, CI's install line and the end-to-end
MiniLM test all say what tools/main_job.py says (profile, --data, --unlabeled, extras)."""

from __future__ import annotations

import json
import re
import shlex

from tests.conftest import ROOT
from tools import main_job

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def code_lines(text: str) -> list[str]:
    """Every line of every fenced code block."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    return [ln for block in blocks for ln in block.splitlines()]


def test_the_readme_quotes_the_main_job():
    lines = code_lines(README)
    # the first command a reader sees
    first = lines[0].split("#")[0].strip()
    assert first == main_job.readme_command()
    # "The two commands": the set-up and the job, in one line
    setup = next(ln for ln in lines if "kdeploy compress" in ln and "pip install" in ln)
    assert f"pip install {main_job.TORCH}" in setup
    assert f"pip install -e {main_job.extras_spec()}" in setup
    assert setup.endswith(main_job.readme_command())


def test_the_dockerfile_runs_the_main_job():
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert cmd == main_job.docker_cmd()
    assert re.search(r"^ENTRYPOINT \[\"kdeploy\"\]$", DOCKERFILE, re.M)
    installs = re.findall(r"^RUN pip install (.+)$", DOCKERFILE, re.M)
    assert main_job.TORCH in installs[0] and installs[1] == main_job.extras_spec()
    # the data volume the comment tells users to mount holds both folders
    assert f":{main_job.DOCKER_DATA_ROOT}:ro" in DOCKERFILE


def test_ci_installs_what_the_readme_test_command_installs():
    ci = re.search(r"pip install --quiet -e \"\.\[([a-z,]+)\]\"", CI).group(1)
    assert tuple(ci.split(",")) == main_job.TEST_EXTRAS
    assert f"pip install --quiet {main_job.TORCH}" in CI
    test_line = next(ln for ln in code_lines(README) if "python -m pytest" in ln)
    assert f"pip install -e {main_job.extras_spec(main_job.TEST_EXTRAS)}" in test_line
    assert set(main_job.EXTRAS) <= set(main_job.TEST_EXTRAS)


def test_the_e2e_test_runs_the_main_job(tmp_path):
    from tests.e2e import test_minilm_cpu

    argv = test_minilm_cpu.command(tmp_path / "teacher", tmp_path / "data", tmp_path / "run")
    args = argv[argv.index("compress") :]
    job = main_job.compress_args(str(tmp_path / "data"))
    assert args[: len(job)] == job
    rest = args[len(job) :]  # only the teacher, the run dir, no progress bar and --set
    flags = {a for a in rest if a.startswith("--")}
    assert flags == {"--model", "--out", "--no-progress", "--set"}, shlex.join(rest)
