# sluice: one image for every role (sluice run --role all|ingress|worker|reports).
# Build: docker build -t sluice:local .     Run: see docker-compose.yml.
# Runtime dependencies only, exactly as pinned (with hashes) in requirements.lock
# (`make lock` refreshes it): no embedded NATS/PostgreSQL binaries, no dev tools, no pip.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv --without-pip /opt/sluice \
    && python -m pip --python /opt/sluice/bin/python install \
        --require-hashes --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY sluice ./sluice
RUN python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && python -m pip --python /opt/sluice/bin/python install --no-deps --no-index /tmp/wheels/sluice-*.whl

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/sluice sluice
COPY --from=build /opt/sluice /opt/sluice
# prod profile (JSON logs, listen on all interfaces, API keys required: README "Security",
# set SLUICE_KEY_SECRET; streams on 3 replicas: a NATS cluster of 3, or set
# SLUICE_STREAM_REPLICAS=1 for one server); NATS_URL and DATABASE_URL come from the
# deployment (without them `sluice run` exits 2 saying so: no embedded servers here).
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SLUICE_ENV=prod \
    SLUICE_HTTP_HOST=0.0.0.0 \
    SLUICE_HTTP_PORT=8000 \
    SLUICE_DATA_DIR=/var/lib/sluice
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 8000
# SIGTERM drains (readiness off, in-flight work written and acked, exit 0 within
# SLUICE_DRAIN_TIMEOUT); give the container longer than that before SIGKILL.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 CMD ["sluice", "health"]
ENTRYPOINT ["sluice"]
CMD ["run"]
