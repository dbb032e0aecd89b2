# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are installed in a builder stage with the same pip steps CI
# runs (`make install`, without the dev extras), and only the virtual environment and the data
# folders are copied into a slim runtime image that runs as an unprivileged user.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system prescreen && useradd --system --gid prescreen --home /app prescreen
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
    PRESCREEN_SAMPLES_DIR=/app/samples
USER prescreen
# The rule sets must load and compile: a broken rule file makes the container unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["prescreen", "rules", "check"]
ENTRYPOINT ["prescreen"]
CMD ["rules", "check"]
