# syntax=docker/dockerfile:1
# Multi-stage build. The builder installs prescreen into a virtual environment with the same pip
# step CI runs (`make install`, without the dev extras); the runtime image gets only that
# environment and the data folders, and runs as an unprivileged user.
#
# BASE_IMAGE is any Debian bookworm image with or without Python. The default is the official
# slim Python image; CI (.ci/build-image, `make image`) builds on a debootstrapped Debian
# minbase whose Python comes from Debian's packages, because no registry can be pulled there.
# Every stage starts from the same base, so the virtual environment's interpreter link is valid
# in the runtime stage whichever kind of base it is.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
# Install Python 3 and venv from Debian only when the base cannot already make a virtual
# environment (the slim Python image can; a plain Debian image cannot). useradd comes from
# Debian's passwd package and the CA bundle pip checks PyPI against from ca-certificates: every
# usual Debian base has both, a trimmed one might not.
RUN set -eu; \
    packages=""; \
    if ! python3 -m venv /tmp/venv-probe >/dev/null 2>&1; then \
      packages="python3 python3-venv"; \
    fi; \
    rm -rf /tmp/venv-probe; \
    command -v useradd >/dev/null 2>&1 || packages="$packages passwd"; \
    [ -f /etc/ssl/certs/ca-certificates.crt ] || packages="$packages ca-certificates"; \
    if [ -n "$packages" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "prescreen needs Python 3.11+"'

FROM base AS builder
# The CA bundle pip checks PyPI's certificate against: the system's by default. A build behind a
# TLS-inspecting proxy mounts the host's bundle for the build and names it here
# (.ci/build-image does); it is never copied into the image.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=${PIP_CERT}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

# The data folders the service and `prescreen demo` read. COPY fails on a missing source, so
# they are picked here: rules/, fhir_mappings/ and samples/ must exist, terminology/ is copied
# when the repository has one. .dockerignore lets only these (and the package) into the context.
FROM base AS data
COPY . /context
RUN set -eu; \
    mkdir /app; \
    for folder in rules fhir_mappings samples; do cp -R "/context/$folder" /app/; done; \
    for folder in terminology; do \
      if [ -d "/context/$folder" ]; then cp -R "/context/$folder" /app/; fi; \
    done

FROM base AS runtime
RUN groupadd --system prescreen \
 && useradd --system --gid prescreen --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin prescreen \
 && mkdir -p /data && chown prescreen:prescreen /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=data /app /app
# The data folders are read-only for the service user; the working directory is the volume, so
# relative outputs (`prescreen demo` writes out/demo) land somewhere writable.
WORKDIR /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PRESCREEN_RULES_DIR=/app/rules \
    PRESCREEN_MAPPINGS_DIR=/app/fhir_mappings \
    PRESCREEN_SAMPLES_DIR=/app/samples \
    PRESCREEN_HOST=0.0.0.0 \
    PRESCREEN_PORT=8000 \
    PRESCREEN_DATABASE_URL=sqlite:////data/prescreen.db
USER prescreen
VOLUME ["/data"]
EXPOSE 8000
# The port is read from the environment so an overridden PRESCREEN_PORT is still checked.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PRESCREEN_PORT', '8000') + '/healthz', timeout=3)"]
ENTRYPOINT ["prescreen"]
CMD ["serve"]
