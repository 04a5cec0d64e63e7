# harmonize_bids container image: two flavours from one file.
#
#   CPU (default; slim Debian + Python 3.11, CPU PyTorch, tcmalloc preloaded):
#     docker build -t harmonize_bids:latest .
#   CUDA (PyPI's CUDA build of torch, which brings the CUDA runtime libraries as
#   nvidia-* wheels: only the host's NVIDIA driver is needed, via --gpus / --nv):
#     docker build --build-arg FLAVOR=cuda --build-arg PRELOAD= -t harmonize_bids:cuda .
#   (a base that already has torch, e.g. a pytorch/pytorch CUDA runtime image, is reused:
#    --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime)
#   From a local base where no registry is reachable (e.g. one made with debootstrap,
#   see tests/container/build_and_run.sh), with a CPU torch wheel in docker/wheels/:
#     podman build --isolation chroot --build-arg BASE_IMAGE=localhost/debian-bookworm ...
#
# Nothing is fetched at run time: the bundled model, the templates and
# bids-validator-deno are inside.  Python dependencies are pinned by
# docker/constraints.txt (scripts/write_constraints.py).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ARG FLAVOR=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX_URL=https://pypi.org/simple
# A CA bundle for pip behind a TLS-intercepting proxy (mounted at build time, e.g.
# podman build -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt:ro
# --build-arg PIP_CERT=/etc/ssl/host-ca.crt); unset: the image's own CAs.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

# A bare Debian base (debootstrap) has no pip/venv; python:* and pytorch/* images do.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends \
            python3 python3-venv python3-pip ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi
# --system-site-packages: the CUDA base's own torch stays usable.
RUN python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, so that no dependency pulls a multi-GB CUDA build into the CPU image.
# A wheel in docker/wheels/ (offline builds) wins over the PyTorch index.
COPY docker/wheels/ /tmp/wheels/
RUN if [ "$FLAVOR" = "cpu" ]; then \
        if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
            pip install --no-index --find-links /tmp/wheels "torch==${TORCH_VERSION}" \
                --no-deps && pip install "torch==${TORCH_VERSION}" --find-links /tmp/wheels; \
        else \
            pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
                --extra-index-url https://pypi.org/simple; \
        fi; \
    elif python3 -c "import torch" 2>/dev/null; then \
        python3 -c "import torch; print('reusing the base image torch', torch.__version__)"; \
    else \
        pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX_URL}" && \
        python3 -c "import torch; assert torch.version.cuda, 'not a CUDA build'; print(torch.__version__, 'CUDA', torch.version.cuda)"; \
    fi

# the pinned dependencies first (a layer that only changes with the pins) ...
COPY docker/constraints.txt /tmp/constraints.txt
RUN pip install --requirement /tmp/constraints.txt
# ... then the package itself, its data (templates, bundled model) included
COPY setup.cfg pyproject.toml README.md /src/
COPY harmonize_bids /src/harmonize_bids
RUN pip install --no-deps /src && pip check && \
    python3 -c "import harmonize_bids, ants, bids, nipype, torch; print('ok')" && \
    bids-validator-deno --version

# -------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime
ARG FLAVOR=cpu
ARG VERSION_TAG=unstable
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
# tcmalloc made the CPU UNet ~2x faster here; the CUDA flavour passes PRELOAD= (empty).
ARG PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && \
    if ! python3 -c "import venv" 2>/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-venv; fi && \
    if [ "$FLAVOR" = "cpu" ]; then \
        apt-get install -y --no-install-recommends libtcmalloc-minimal4; fi && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --create-home --uid 1000 --shell /bin/bash harmonize && \
    mkdir -p /work /data /out && chmod 1777 /work /out
COPY --from=build /opt/venv /opt/venv

# HOME, caches and matplotlib's config live in /tmp, writable by any UID
# (docker run -u $(id -u):$(id -g) ...) and the only writable place besides the
# mounts when the root filesystem is read-only (--read-only --tmpfs /tmp).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    DENO_DIR=/tmp/.deno \
    PYTHONDONTWRITEBYTECODE=1 \
    NIPYPE_NO_ET=1 \
    LD_PRELOAD=${PRELOAD} \
    HARMONIZE_BIDS_CONTAINER=docker \
    HARMONIZE_BIDS_CONTAINER_TAG=${VERSION_TAG} \
    HARMONIZE_BIDS_BUILD="${FLAVOR} image, commit ${VCS_REF}, built ${BUILD_DATE}"
RUN echo "harmonize_bids $(python3 -c 'import harmonize_bids; print(harmonize_bids.__version__)') (${VERSION_TAG}; ${FLAVOR}; commit ${VCS_REF}; built ${BUILD_DATE})" > /version && \
    harmonize_bids --version && harmonize_bids --model-info > /dev/null

LABEL org.opencontainers.image.title="harmonize_bids" \
      org.opencontainers.image.description="BIDS App: diffusion-model harmonization of T1w MRI across sites" \
      org.opencontainers.image.source="https://github.com/harmonize-bids/harmonize_bids" \
      org.opencontainers.image.licenses="Apache-2.0 AND CC-BY-SA-3.0" \
      org.opencontainers.image.version="${VERSION_TAG}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"

USER harmonize
WORKDIR /tmp
ENTRYPOINT ["harmonize_bids"]
