# pretextlab GPU worker image: the official PyTorch CUDA runtime image (torch + torchvision built for
# CUDA 12.6 / cuDNN 9; torch 2.14.1, the newest pyproject.toml allows), plus the worker, ssl_core and
# Debian/Ubuntu's dataset-fashion-mnist.
#   docker build -f docker/worker.Dockerfile -t pretextlab-worker .
# The host needs only the NVIDIA driver and the NVIDIA Container Toolkit; CUDA itself is in the image.
FROM pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PRETEXTLAB_ARTIFACT_ROOT=/var/lib/pretextlab/artifacts \
    PRETEXTLAB_DATA_ROOT=/var/lib/pretextlab/data

# The default dataset ships inside the image (/usr/share/datasets/fashion-mnist/*.gz): no download
# at run time; the entrypoint copies it into the datasets volume (`pretextlab data prepare`).
# g++: a spec's `compile: true` runs torch.compile (inductor), which builds C++ kernels on CPUs
# and Triton's launcher stubs on GPUs at run time; the runtime base image has no compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist g++ \
 && rm -rf /var/lib/apt/lists/* \
 && ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Same uid/gid as the API image, so both can write the shared artifacts and datasets volumes.
RUN groupadd --system --gid 10001 pretextlab \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/pretextlab \
      --shell /usr/sbin/nologin pretextlab \
 && mkdir -p /var/lib/pretextlab/artifacts /var/lib/pretextlab/data \
 && chown -R 10001:10001 /var/lib/pretextlab

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer survives source edits. torch and
# torchvision stay the CUDA builds of the base image (pinned to their installed versions).
COPY pyproject.toml docker/install_deps.py /tmp/deps/
RUN python /tmp/deps/install_deps.py /tmp/deps/pyproject.toml --extra ml --keep torch --keep torchvision

# Then the source. Editable install: api.db.session finds migrations/ next to the packages.
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY ssl_core ./ssl_core
COPY api ./api
COPY worker ./worker
COPY pretextlab ./pretextlab
RUN pip install --no-deps -e .
COPY docker/worker-entrypoint.sh /usr/local/bin/pretextlab-worker-entrypoint
RUN chmod 0755 /usr/local/bin/pretextlab-worker-entrypoint

USER 10001:10001

ENTRYPOINT ["pretextlab-worker-entrypoint"]
# One job at a time per GPU; docker-compose.yml sets the queues per service.
CMD ["pretextlab", "worker", "--queues", "gpu", "--concurrency", "1"]
