# The HDC worker: `hdc-worker serve` on a plain Debian base (runs on CPU-only nodes and on GPU nodes alike).
#   docker build -f deploy/worker.Dockerfile -t ghcr.io/hd-compute/hdc-worker:0.1.0 .     (from the repository root)
# `make images` builds the same image without Docker (hack/images/build_images.py reads this file: its apt packages, the
# pip install, the ENV/USER/WORKDIR/ENTRYPOINT/CMD/EXPOSE/LABEL of the final stage); tests/deploy/test_images.py
# compares the two.
# GPU: torch's PyPI wheels carry the CUDA libraries (nvidia-* distributions), so no CUDA base image is needed; the
# NVIDIA container toolkit on the node mounts the driver (libcuda) into the container.
# Runs as UID 10001 and suits a read-only root filesystem: it writes only under /tmp and HDC_STATE_DIR
# (/var/lib/hdc: mount an emptyDir or a volume there). No secrets are baked in: pass database URLs and the
# like through the environment at run time (e.g. HDC_BENCHMARK_DATABASE_URL from a Secret).
# tests/deploy/test_dockerfiles.py checks that every command below exists in the package.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 hdc \
 && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --home-dir /nonexistent --shell /usr/sbin/nologin hdc
RUN python3 -m venv /opt/hdc
ENV PATH=/opt/hdc/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build stage: compiles the CPU popcount kernels (setup.py) and installs the package with the worker's extra
# into /opt/hdc; the compiler stays in this stage.
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md MANIFEST.in ./
COPY worker/ worker/
RUN pip install ".[worker]" \
 && hdc-worker --help

FROM base
COPY --from=build /opt/hdc /opt/hdc
RUN mkdir -p /var/lib/hdc \
 && chown 10001:10001 /var/lib/hdc
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hdc-worker" \
      org.opencontainers.image.description="HD-Compute-Toolkit worker: hyperdimensional computing over HTTP" \
      org.opencontainers.image.source="https://github.com/hd-compute/hd-compute-toolkit" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp \
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
