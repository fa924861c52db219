# syntax=docker/dockerfile:1
# The worker's image: `docker build -t resilient-sqs-worker .`, then `docker run ... resilient-sqs-worker`
# (settings from WORKER_* variables, AWS from the usual AWS_* ones or the task/pod role).
# To ship your own handler: `FROM resilient-sqs-worker`, COPY your package, set WORKER_HANDLER.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtualenv holding the pinned dependencies, then the worker's own wheel ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# The venv gets no pip of its own: the build stage's pip installs into it (--python), so the final
# image carries no installer.
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
# Dependencies first, from the lock only: this layer is rebuilt when the pins change, not the code. Every pin
# carries the sha256 of each file published for its version (make lock): pip refuses any other file.
COPY constraints/runtime.txt constraints/runtime.txt
RUN python -m pip --python /opt/venv/bin/python install --no-deps --require-hashes \
        -r constraints/runtime.txt
# Then the source: a wheel built in an isolated build env (hatchling never lands in the image).
COPY pyproject.toml README.md ./
COPY localstack/host/requirements.txt localstack/host/requirements.txt
COPY worker/ worker/
RUN python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && python -m pip --python /opt/venv/bin/python install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- final: the slim base, the venv, tini, a non-root user; no compilers, pip or caches ----
FROM ${PYTHON_IMAGE} AS final
# tini is PID 1: it forwards SIGTERM/SIGINT to the worker (whose drain depends on them) and reaps
# zombies of handler subprocesses. Without it the worker would be PID 1, and PID 1 ignores SIGTERM
# until it installs a handler: a stop during start-up would wait for the kill timeout.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip uninstall --yes --no-input pip setuptools wheel \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin worker
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKER_HTTP_HOST=0.0.0.0 \
    WORKER_HTTP_PORT=9102
LABEL org.opencontainers.image.title="resilient-sqs-worker" \
      org.opencontainers.image.description="A resilient asyncio SQS/SNS worker with Prometheus metrics" \
      org.opencontainers.image.licenses="MIT"
USER 10001:10001
WORKDIR /tmp
EXPOSE 9102
# Liveness, as Kubernetes' probe and ECS's health check see it (slim images have no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:' + os.environ.get('WORKER_HTTP_PORT', '9102') + '/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "worker"]
CMD ["run"]
