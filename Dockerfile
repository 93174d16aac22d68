# syntax=docker/dockerfile:1
# celery-kafka-bridge image: the bridge by default, the example Celery worker with
#   docker run --entrypoint celery IMAGE -A tasks worker -Q orders,celery
# Build: docker build -t celery-kafka-bridge:local .
# The build context is restricted by .dockerignore to what `pip install .` needs.

############################# build: install into a venv #############################
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# what the wheel is built from (pyproject.toml: packages bridge + tasks, readme README.md,
# force-include config/kafka)
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY tasks ./tasks
COPY config/kafka ./config/kafka
# confluent-kafka ships manylinux wheels with librdkafka inside: no compiler needed; the otel
# extra so `tracing.enabled: true` works in the image (exporter set by OTEL_* variables)
RUN python -m venv /opt/ckb \
 && /opt/ckb/bin/pip install ".[otel,postgres]"

############################# runtime #############################
FROM python:3.11-slim

# CKB_METRICS__HOST: the package serves its ops port on 127.0.0.1; a container must listen
# on its own interface for a published port, other containers or the kubelet's probes to
# reach it (the variable wins over the config file: set it to bind otherwise)
ENV PATH=/opt/ckb/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CKB_METRICS__HOST=0.0.0.0

# numeric, non-root user, so Kubernetes' runAsNonRoot can verify it
RUN groupadd --system --gid 10001 ckb \
 && useradd --system --uid 10001 --gid ckb --home-dir /home/ckb --create-home \
        --shell /usr/sbin/nologin ckb

COPY --from=build /opt/ckb /opt/ckb
# a default config (127.0.0.1 everywhere but the ops port, see CKB_METRICS__HOST above);
# compose and Kubernetes mount their own here
COPY config/bridge.yaml /etc/ckb/bridge.yaml

WORKDIR /home/ckb
USER 10001:10001

# Prometheus /metrics, /healthz (liveness), /readyz (readiness)
EXPOSE 9108

# the bridge stops fetching, waits up to limits.shutdown_grace (30 s), commits, flushes the
# dead-letter producer and leaves the group: give it longer than that before SIGKILL
# (docker stop -t 45, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds)
STOPSIGNAL SIGTERM

# no curl in slim: Python's urllib; any HTTP error or refused connection exits non-zero.
# The port follows CKB_METRICS__PORT when set. Worker/Flower containers override this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CKB_METRICS__PORT', '9108'), timeout=4)"]

ENTRYPOINT ["ckb"]
CMD ["run", "-c", "/etc/ckb/bridge.yaml"]
