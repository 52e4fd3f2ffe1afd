#!/bin/sh
# Worker container entrypoint: put the bundled Fashion-MNIST into the datasets volume
# (PRETEXTLAB_DATA_ROOT), then hand PID 1 to the worker so it receives SIGTERM itself
# (a SIGTERM checkpoints the running job and hands it back to the queue).
set -eu
pretextlab data prepare fashion_mnist
exec "$@"
