# syntax=docker/dockerfile:1
# Multi-stage build. The builder installs prescreen into a virtual environment with the same pip
# step CI runs (`make install`, without the dev extras); the runtime image gets only that
# environment and the data folders, and runs as an unprivileged user.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system prescreen \
 && useradd --system --gid prescreen --home /app prescreen \
 && mkdir -p /data && chown prescreen:prescreen /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY rules ./rules
COPY fhir_mappings ./fhir_mappings
COPY samples ./samples
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["prescreen"]
CMD ["serve"]
