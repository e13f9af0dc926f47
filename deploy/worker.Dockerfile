# The HDC worker: `hdc-worker serve` on a CUDA runtime base (runs on CPU-only nodes too).
#   docker build -f deploy/worker.Dockerfile -t hdc-worker .        (from the repository root)
# Runs as UID 10001 and suits a read-only root filesystem: it writes only under /tmp and HDC_STATE_DIR
# (/var/lib/hdc: mount an emptyDir or a volume there). No secrets are baked in: pass database URLs and the
# like through the environment at run time (e.g. HDC_BENCHMARK_DATABASE_URL from a Secret).
# tests/test_dockerfiles.py checks that every command below exists in the package.

ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${CUDA_RUNTIME_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/hdc
ENV PATH=/opt/hdc/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build stage: compiles the CPU popcount kernels (setup.py) and installs the package into /opt/hdc.
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY worker/ worker/
RUN pip install . \
 && hdc-worker --help

FROM base
COPY --from=build /opt/hdc /opt/hdc
RUN mkdir -p /var/lib/hdc \
 && chown 10001:10001 /var/lib/hdc
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HDC_STATE_DIR=/var/lib/hdc \
    HDC_HOST=0.0.0.0 \
    HDC_PORT=8080
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "hd_compute.health"]
ENTRYPOINT ["hdc-worker"]
CMD ["serve"]
