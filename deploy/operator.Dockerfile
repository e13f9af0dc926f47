# The HDCWorkload operator: `hdc-operator` on a slim Python base, without torch (it never imports it).
#   docker build -f deploy/operator.Dockerfile -t hdc-operator .        (from the repository root)
# Installs the operator's runtime requirements from ONE place, pyproject.toml's [dependency-groups] operator
# (pip >= 25.1 reads it with --group), then the package itself with --no-deps (so torch stays out).
# Runs as UID 10001 and suits a read-only root filesystem: Python writes no .pyc files, HOME is /tmp, and the
# operator writes nothing to disk. The HDCWorkload CRD ships in the image (hdc_operator.spec reads its schema
# defaults from HDC_CRD_PATH). tests/test_dockerfiles.py checks all of this against the package.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build stage: setup.py compiles the worker's CPU kernels, so the wheel build needs a C compiler; the operator
# never loads them.
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/hdc
ENV PATH=/opt/hdc/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY worker/ worker/
COPY operator/ operator/
RUN pip install --upgrade "pip>=25.1" \
 && pip install --group operator \
 && pip install --no-deps . \
 && hdc-operator --help

FROM base
COPY --from=build /opt/hdc /opt/hdc
COPY crds/ /opt/hdc/crds/
ENV PATH=/opt/hdc/bin:$PATH \
    HDC_CRD_PATH=/opt/hdc/crds/hdcworkload.yaml \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
# 8081: /metrics, 8082: /healthz (kopf's liveness endpoint)
EXPOSE 8081 8082
ENTRYPOINT ["hdc-operator"]
