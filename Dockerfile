# Leitstand's container image: `leitstand run`, the operator, with its Numba kernels compiled at build
# time (docs/image.md: how to build with docker, podman or buildah, sizes, start times, the cache).
#
#   docker build -t leitstand:0.1.0 .                        # base: the official python:3.11-slim
#   bash scripts/image.sh                                    # here: buildah, from a local Debian base
#
# Stage 1 builds the wheel and installs it with its runtime dependencies (never the dev extra) into a
# venv; stage 2 is the base image, that venv, a non-root user and the precompiled kernels.

ARG BASE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
FROM ${BASE} AS build

# a package mirror and a CA bundle for TLS-intercepting proxies, for this stage only (never in the
# final image): e.g. --build-arg PIP_INDEX_URL=https://mirror.example/simple
ARG PIP_INDEX_URL
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# only what the wheel is made of (.dockerignore keeps the rest of the repository out of the context)
COPY pyproject.toml README.md ./
COPY scheduler/ scheduler/
COPY operator/ operator/

# the wheel (its build backend, setuptools, comes from PyPI into pip's isolated build environment);
# then the runtime venv: the wheel and its [project] dependencies only, no pip or setuptools left in it;
# byte-code compiled once and never validated at run time (the image is immutable and the root file
# system may be read-only), so imports never stat sources against stale .pyc files
RUN python3 -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip wheel --no-deps --wheel-dir /dist . \
 && python3 -m venv /opt/leitstand/venv \
 && /opt/leitstand/venv/bin/pip install --no-compile /dist/leitstand-*.whl \
 && /opt/leitstand/venv/bin/pip freeze --exclude-editable > /opt/leitstand/requirements.txt \
 && /opt/leitstand/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/leitstand/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/leitstand/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/leitstand/venv/lib

# ---------------------------------------------------------------------------------------------------
FROM ${BASE}

# The compiled kernels are keyed by the CPU they were compiled for (Numba's cache index holds the
# LLVM CPU name and feature string). `generic` (x86-64 baseline, no feature string) makes the cache
# built on one machine valid on every node; e.g. NUMBA_CPU_NAME=x86-64-v3 targets AVX2-class nodes
# (docs/image.md has the measured difference).
ARG NUMBA_CPU_NAME=generic
ARG NUMBA_CPU_FEATURES=

# a fixed numeric UID/GID, so that runAsNonRoot can verify it without a passwd lookup
RUN groupadd --gid 10001 leitstand \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin leitstand

COPY --from=build /opt/leitstand /opt/leitstand
COPY scripts/image/entrypoint.sh /opt/leitstand/bin/entrypoint

ENV PATH=/opt/leitstand/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    NUMBA_CPU_FEATURES=${NUMBA_CPU_FEATURES}

# Compile the kernels into the image: the seed cache, root-owned and never written at run time. The
# entry point copies it into the writable NUMBA_CACHE_DIR below (an emptyDir under a read-only root
# file system), because Numba ignores a cache directory it cannot write to.
RUN chmod 0755 /opt/leitstand/bin/entrypoint \
 && NUMBA_CACHE_DIR=/opt/leitstand/numba-cache leitstand run --check \
 && leitstand --version \
 && install -d -o 10001 -g 10001 -m 0755 /var/cache/leitstand/numba

ENV NUMBA_CACHE_DIR=/var/cache/leitstand/numba \
    LEITSTAND_NUMBA_SEED=/opt/leitstand/numba-cache

USER 10001:10001

ENTRYPOINT ["/opt/leitstand/bin/entrypoint", "leitstand", "run"]
CMD []

# last, so that new build metadata never invalidates the cached layers above
ARG BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="leitstand" \
      org.opencontainers.image.description="Kubernetes-native, topology-aware GPU scheduler: leitstand run, with its Numba kernels precompiled" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}" \
      dev.leitstand.numba.cpu-name="${NUMBA_CPU_NAME}"
