# The HDCWorkload operator: `hdc-operator` on a plain Debian base, without torch (it never imports it).
#   docker build -f deploy/operator.Dockerfile -t ghcr.io/hd-compute/hdc-operator:0.1.0 .     (from the repository root)
# `make images` builds the same image without Docker (hack/images/build_images.py reads this file); tests/deploy/
# test_images.py compares the two.
# Installs the operator's runtime requirements from ONE place, pyproject.toml's [dependency-groups] operator
# (pip >= 25.1 reads it with --group), then the package itself with --no-deps (so torch stays out).
# Runs as UID 10001 and suits a read-only root filesystem: Python writes no .pyc files, HOME is /tmp, and the
# operator writes nothing to disk. The HDCWorkload CRD ships in the image (hdc_operator.spec reads its schema
# defaults from HDC_CRD_PATH). tests/deploy/test_dockerfiles.py checks all of this against the package.

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

# Build stage: setup.py compiles the worker's CPU kernels, so the wheel build needs a C compiler; the operator
# never loads them.
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md MANIFEST.in ./
COPY worker/ worker/
COPY operator/ operator/
RUN pip install --upgrade "pip>=25.1" \
 && pip install --group operator \
 && pip install --no-deps . \
 && hdc-operator --help

FROM base
COPY --from=build /opt/hdc /opt/hdc
COPY crds/ /opt/hdc/crds/
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hdc-operator" \
      org.opencontainers.image.description="HD-Compute-Toolkit operator: reconciles HDCWorkloads" \
      org.opencontainers.image.source="https://github.com/hd-compute/hd-compute-toolkit" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
ENV HDC_CRD_PATH=/opt/hdc/crds/hdcworkload.yaml \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
# 8081: /metrics, 8082: /healthz (kopf's liveness endpoint)
EXPOSE 8081 8082
ENTRYPOINT ["hdc-operator"]
