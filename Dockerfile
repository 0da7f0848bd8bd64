# Radpipe container image: one image for every service (ingest, portal, notify, workers).
#
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> \
#       -t ghcr.io/radpipe/radpipe:0.1.0 .                                        # CPU
#   docker build --build-arg VARIANT=cuda -t ghcr.io/radpipe/radpipe:0.1.0-cuda .  # NVIDIA GPU
#
# The README ("Container images") says which index URL to pass and why.
#
# Build with BuildKit (the default builder since Docker 23): it builds only the stages the
# chosen VARIANT needs, so a CPU build never pulls the CUDA base image.
#
# The service is chosen by the command: `radpipe serve ingest|portal|notify` or
# `radpipe worker deid|inference|notify`; the default is the all-in-one `radpipe up`.
#
# Reproducible: Python packages are installed with `--constraint requirements.lock` (`make
# lock`), torch at TORCH_VERSION, OHIF at OHIF_VERSION (the Makefile's). Hardened: runs as
# uid 10001, needs no capability, and writes only to /tmp and /data, so it runs with a
# read-only root filesystem (compose: read_only + tmpfs; Kubernetes: emptyDir volumes).

# cpu | cuda
ARG VARIANT=cpu
# torch is pinned here and in pyproject.toml; the variant only picks the wheel build.
ARG TORCH_VERSION=2.13.0
# Index to take torch from: PyTorch's own CPU or CUDA wheel index for the matching variant
# (--build-arg TORCH_INDEX_URL=...). No default (no package index host is written here): the
# CPU variant requires it, since the default index serves the multi-gigabyte CUDA build for
# x86_64 under the same version; for the CUDA variant empty means pip's configured index.
ARG TORCH_INDEX_URL=
# The prebuilt OHIF viewer (npm @ohif/app) the portal serves at /ohif; the Makefile's version.
ARG OHIF_VERSION=3.11.1

# ---------------------------------------------------------------------------------------
# builder: a wheel of the project only (pure Python, identical for both variants).
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ ./services/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------
# ohif: the prebuilt viewer from npm (its dist folder only; no Node in the final image).
FROM node:22-slim AS ohif
ARG OHIF_VERSION
WORKDIR /ohif
RUN npm pack --silent "@ohif/app@${OHIF_VERSION}" \
    && tar xzf "ohif-app-${OHIF_VERSION}.tgz" \
    && rm "ohif-app-${OHIF_VERSION}.tgz" \
    && test -f package/dist/index.html

# ---------------------------------------------------------------------------------------
# runtime-cpu: Debian slim with the CPU-only torch wheel (a few hundred MB, not GBs of CUDA).
# Fails without TORCH_INDEX_URL, and fails if the torch it got was built with CUDA.
FROM python:3.11-slim AS runtime-cpu
ARG TORCH_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
ARG TORCH_INDEX_URL
RUN if [ -z "${TORCH_INDEX_URL}" ]; then \
        echo "TORCH_INDEX_URL is not set: pass PyTorch's CPU wheel index with --build-arg TORCH_INDEX_URL=... (README, Container images)" >&2; \
        exit 1; \
    fi \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA {torch.version.cuda} build: TORCH_INDEX_URL must be the CPU wheel index') if torch.version.cuda else print('torch', torch.__version__, 'CPU build')"

# ---------------------------------------------------------------------------------------
# runtime-cuda: NVIDIA's runtime image (driver-facing CUDA libraries) with Python 3.11.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04 AS runtime-cuda
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Unpinned apt packages (DL3008): the base image tag fixes the Ubuntu release, and exact
# package versions are superseded by every security update and would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

# ---------------------------------------------------------------------------------------
# runtime: the chosen variant plus Radpipe, run as an unprivileged user.
# Untagged image (DL3006): runtime-${VARIANT} names a stage of this file, not a registry image.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="radpipe" \
      org.opencontainers.image.description="DICOM imaging-AI pipeline (${VARIANT})" \
      org.opencontainers.image.source="https://github.com/radpipe/radpipe" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/radpipe \
    RADPIPE_DATA_DIR=/data \
    RADPIPE_OHIF_DIR=/opt/ohif

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and volume ownership is
# predictable across hosts.
RUN groupadd --system --gid 10001 radpipe \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/radpipe --create-home \
        --shell /usr/sbin/nologin radpipe \
    && mkdir -p /data \
    && chown 10001:10001 /data

# torch is already in the venv at the pinned version, so pip keeps it and adds the rest at
# the versions of requirements.lock (torch's own dependencies included: they are resolved
# again here; not in the torch step, whose index mirrors only some of their versions).
COPY --from=builder /wheels/ /tmp/wheels/
COPY requirements.lock /tmp/requirements.lock
# The CPU image checks again once everything is installed: nothing may have replaced its torch
# with a CUDA build.
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements.lock \
    && VARIANT="${VARIANT}" python -c "import os, sys, torch, radpipe; cpu = os.environ['VARIANT'] == 'cpu'; sys.exit(f'the cpu image got a CUDA {torch.version.cuda} build of torch') if cpu and torch.version.cuda else print('torch', torch.__version__, torch.version.cuda or 'CPU')"

# Owned by root, read-only to the service user.
COPY --from=ohif /ohif/package/dist/ /opt/ohif/

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 8000: HTTP (DICOMweb, API, portal); 11112: DIMSE C-STORE.
EXPOSE 8000 11112

# Python instead of curl: nothing extra in the image. Workers serve no HTTP; compose and
# Kubernetes replace or drop this check for them.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["radpipe"]
CMD ["up", "--host", "0.0.0.0"]
