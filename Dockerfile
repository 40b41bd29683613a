# cryptopipe: the trading daemon on a slim Python, run as a non-root user, state on /data.
#
#   docker build -t cryptopipe .
#   docker run --rm -v cryptopipe-data:/data -p 127.0.0.1:9108:9108 cryptopipe
#
# BASE_IMAGE lets a locally built Python image stand in for the registry's (any Debian-like
# image with python3 and its venv module); both stages must use the same one, because the
# virtualenv copied into the runtime stage points at the base image's interpreter.
# tests/test_docker.py runs this file's install and entry commands in a fresh venv and lints
# it with hadolint, so keep every step something a plain shell can do.
ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtualenv with the project and the dependencies pyproject.toml declares ------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md main.py ./
COPY adapters/ adapters/
COPY config/ config/
COPY daemon/ daemon/
COPY strategies/ strategies/
RUN /opt/venv/bin/pip install --no-cache-dir .

# -- runtime: the virtualenv and the entry script, nothing else ------------------------------
FROM ${BASE_IMAGE}
# Metrics listen on every interface inside the container so `-p 9108:9108` can reach them;
# publish the port on 127.0.0.1 of the host unless a scraper elsewhere needs it.
# Numba caches compiled kernels under NUMBA_CACHE_DIR: the venv is not writable by the user.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    CRYPTOPIPE_DATA_DIR=/data \
    CRYPTOPIPE_METRICS__HOST=0.0.0.0
RUN groupadd --gid 10001 cryptopipe \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /app --shell /usr/sbin/nologin cryptopipe \
    && mkdir -p /data /app \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/main.py /app/main.py
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 9108
# 503 (stale feed, kill switch) or no answer makes urlopen raise: exit status 1, unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CRYPTOPIPE_METRICS__PORT', '9108'), timeout=4)"]
ENTRYPOINT ["python", "main.py"]
# Arbitrage in action mode on paper (live trading needs keys and --live).
CMD ["--strategy", "arbitrage", "--mode", "action"]
