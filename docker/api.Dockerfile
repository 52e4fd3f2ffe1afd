# pretextlab API image: FastAPI + SQL + Celery producer. No CUDA, no torch: the API never imports it.
#   docker build -f docker/api.Dockerfile -t pretextlab-api .
# Also runs the one-shot `pretextlab db upgrade` (compose service `migrate`) and the reconciler.
FROM python:3.12.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRETEXTLAB_ARTIFACT_ROOT=/var/lib/pretextlab/artifacts \
    PRETEXTLAB_DATA_ROOT=/var/lib/pretextlab/data \
    PRETEXTLAB_HOST=0.0.0.0

# Same uid/gid as the worker image, so both can write the shared artifacts and datasets volumes.
# The mount points exist (owned by that user) so a fresh named volume inherits the ownership.
RUN groupadd --system --gid 10001 pretextlab \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/pretextlab \
      --shell /usr/sbin/nologin pretextlab \
 && mkdir -p /var/lib/pretextlab/artifacts /var/lib/pretextlab/data \
 && chown -R 10001:10001 /var/lib/pretextlab

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer survives source edits.
COPY pyproject.toml docker/install_deps.py /tmp/deps/
RUN python /tmp/deps/install_deps.py /tmp/deps/pyproject.toml \
 && python -c "import importlib.util, sys; sys.exit('torch must not be in the API image' if importlib.util.find_spec('torch') else 0)"

# Then the source. Editable install: api.db.session finds migrations/ next to the packages.
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY ssl_core ./ssl_core
COPY api ./api
COPY worker ./worker
COPY pretextlab ./pretextlab
RUN pip install --no-deps -e .

USER 10001:10001
EXPOSE 8000

# No curl in the slim image: the standard library does the probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# 0.0.0.0 inside the container only, declared as PRETEXTLAB_HOST above: the API refuses to start
# without a token of >= 32 characters, and refuses PRETEXTLAB_AUTH=off on this non-loopback bind.
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
