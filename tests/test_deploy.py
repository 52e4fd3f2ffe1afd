"""The GPU deployment, checked without a Docker engine.

* the compose files are YAML and valid Compose: Debian's ``docker-compose`` (v1.29, installed by
  .ci/run) validates them against the Compose Specification JSON schema it ships (profiles,
  ``deploy.resources.reservations.devices`` and ``service_completed_successfully`` included);
* the services of the deployment are there, with their healthchecks, dependency conditions, GPU
  reservation (one worker per host owning several GPUs, with the shared memory NCCL needs, and
  one task slot per GPU), persistent Redis, and an API that needs a token (named, or optionally
  from .env) and starts with a named one alone;
* every command, entrypoint and healthcheck in the compose files and the Dockerfiles names a real
  part of the project (``pretextlab`` subcommands through the CLI's own parser, ``api.main:app``
  imported without torch, scripts and COPY sources that exist and reach the build context);
* the Dockerfiles pin their bases, install dependencies before the source, run as non-root, and
  the API image installs no torch;
* every environment variable the compose files and images set is a setting, and each fallback
  value equals that setting's own default.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import unavailable
from tests.support.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
WORKER_HOST = ROOT / "docker" / "worker-host.compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

# What the compose files need to be rendered: a dummy token and passwords, MinIO's public address,
# and a remote DB/broker/object store for the worker host.
DUMMY_ENV = {
    "PRETEXTLAB_API_TOKENS": "test-token",
    "POSTGRES_PASSWORD": "test-password",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
    "PRETEXTLAB_S3_PUBLIC_ENDPOINT_URL": "http://gpu-host.example:9000",
    "PRETEXTLAB_DB_APP_PASSWORD": "test-app-password",
    "REDIS_PASSWORD": "test-redis-password",
    "PRETEXTLAB_DATABASE_URL": "postgresql+psycopg://pretextlab:pw@10.0.0.1:5432/pretextlab",
    "PRETEXTLAB_BROKER_URL": "redis://10.0.0.1:6379/0",
    "PRETEXTLAB_ARTIFACT_URL": "s3://pretextlab/artifacts",
    "PRETEXTLAB_S3_ENDPOINT_URL": "http://10.0.0.1:9000",
}
# boto3 reads these itself (credentials and region of the object store): not settings of ours.
BOTO3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# ssl_core reads these two straight from the environment (it must not import api).
SSL_CORE_ENV = {"PRETEXTLAB_DATA_ROOT", "PRETEXTLAB_ALLOWED_DATA_ROOTS"}
THIRD_PARTY_ENV = {"postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}, "redis": {"REDISCLI_AUTH"},
                   "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}}


# -- reading the files ------------------------------------------------------------------------
def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)  # SafeLoader resolves the `<<: *anchor` merge keys like compose


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            return val if (val if op == ":-" else val is not None) else arg
        if op in (":?", "?"):
            if not val if op == ":?" else val is None:
                raise KeyError(f"{name}: {arg}")
            return val
        return val or ""

    return _VAR.sub(sub, value)


def variables(path: Path) -> dict[str, set[str]]:
    """Interpolated variable -> the set of fallback values it is given in ``path`` ('' = none)."""
    out: dict[str, set[str]] = {}
    for m in _VAR.finditer(path.read_text()):
        if m.group(0) != "$$":
            out.setdefault(m.group(1) or m.group(4), set()).add(m.group(3) if m.group(2) in (":-", "-") else "")
    return out


def rendered(path: Path, env: dict[str, str] | None = None) -> dict:
    return interpolate(load(path), {**DUMMY_ENV, **(env or {})})


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def argv(value) -> list[str]:
    return list(value) if isinstance(value, list) else shlex.split(value)


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: JSON exec form, else shell form."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def image_defaults(dockerfile: Path) -> tuple[list[str], list[str]]:
    ins = parse_dockerfile(dockerfile)
    entry = [exec_form(a) for i, a in ins if i == "ENTRYPOINT"]
    cmd = [exec_form(a) for i, a in ins if i == "CMD"]
    return (entry[-1] if entry else []), (cmd[-1] if cmd else [])


def our_dockerfile(service: dict, compose_file: Path) -> Path | None:
    build = service.get("build")
    if not build:
        return None
    context = (compose_file.parent / (build if isinstance(build, str) else build.get("context", "."))).resolve()
    return context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")


def settings_env_names() -> set[str]:
    from api.settings import Settings

    return {f"PRETEXTLAB_{name.upper()}" for name in Settings.model_fields} | SSL_CORE_ENV


# -- compose validity -------------------------------------------------------------------------
def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        unavailable("docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
    return exe


def run_compose(tmp_path: Path, compose_file: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``docker-compose -f FILE --env-file ENV ... config -q`` with a clean environment, so neither
    the developer's shell nor a local .env decides the outcome."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PRETEXTLAB_", "POSTGRES_", "GPU_", "API_", "ARTIFACT_", "COMPOSE_", "MINIO_", "AWS_"))}
    return subprocess.run(
        [docker_compose(), "-f", str(compose_file), "--env-file", str(env_file), *args, "config", "-q"],
        cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("compose_file, profiles", [
    (COMPOSE, []), (COMPOSE, ["cpu"]), (WORKER_HOST, []),
], ids=["main", "main-cpu-profile", "worker-host"])
def test_compose_files_are_valid_compose(tmp_path, compose_file, profiles):
    extra = [a for p in profiles for a in ("--profile", p)]
    res = run_compose(tmp_path, compose_file, DUMMY_ENV, *extra)
    assert res.returncode == 0, res.stderr


def test_the_validator_rejects_an_invalid_file(tmp_path):
    """The check above is a real schema check: a misspelt key fails it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    res = run_compose(tmp_path, broken, DUMMY_ENV)
    assert res.returncode != 0 and "stop_grace_periods" in res.stderr


def test_compose_needs_no_env_token_but_refuses_without_its_passwords(tmp_path):
    # The bootstrap token is a named one (`docker compose run --rm api pretextlab token create admin
    # --admin`): PRETEXTLAB_API_TOKENS is optional, and renders empty when unset.
    env = {k: v for k, v in DUMMY_ENV.items() if k != "PRETEXTLAB_API_TOKENS"}
    res = run_compose(tmp_path, COMPOSE, env)
    assert res.returncode == 0, res.stderr
    assert env_of(rendered(COMPOSE, {"PRETEXTLAB_API_TOKENS": ""})["services"]["api"])["PRETEXTLAB_API_TOKENS"] == ""
    # .env.example copied as it is does not start: its passwords are empty on purpose.
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["PRETEXTLAB_API_TOKENS"] == "" and example["POSTGRES_PASSWORD"] == ""
    res = run_compose(tmp_path, COMPOSE, example)
    assert res.returncode != 0 and "POSTGRES_PASSWORD" in res.stderr


def test_worker_host_needs_remote_database_broker_and_object_store(tmp_path):
    for missing in ("PRETEXTLAB_DATABASE_URL", "PRETEXTLAB_BROKER_URL", "PRETEXTLAB_ARTIFACT_URL",
                    "PRETEXTLAB_S3_ENDPOINT_URL", "MINIO_ROOT_PASSWORD"):
        env = {k: v for k, v in DUMMY_ENV.items() if k != missing}
        res = run_compose(tmp_path, WORKER_HOST, env)
        assert res.returncode != 0 and missing in res.stderr, missing
    with pytest.raises(KeyError, match="PRETEXTLAB_ARTIFACT_URL"):
        interpolate(load(WORKER_HOST), {k: v for k, v in DUMMY_ENV.items() if k != "PRETEXTLAB_ARTIFACT_URL"})


# -- the services of the deployment ------------------------------------------------------------
@pytest.fixture(scope="module")
def main() -> dict:
    return rendered(COMPOSE)


@pytest.fixture(scope="module")
def services(main) -> dict:
    return main["services"]


def test_every_service_of_the_deployment_is_there(services):
    assert {"postgres", "redis", "minio", "migrate", "api", "worker", "reconciler", "worker-cpu"} <= set(services)
    assert services["worker-cpu"].get("profiles") == ["cpu"]  # optional
    assert not [n for n in services if n.startswith("worker-gpu")]  # one worker owns the host's GPUs
    for name, svc in services.items():
        if name != "worker-cpu":
            assert not svc.get("profiles"), f"{name} must start with a plain `docker compose up`"


def _named_volume(main: dict, svc: dict, target: str) -> str:
    for v in svc.get("volumes", []):
        source, _, rest = v.partition(":")
        if rest.split(":")[0] == target:
            assert source in (main.get("volumes") or {}), f"{source} is not a named volume"
            return source
    raise AssertionError(f"nothing mounted at {target}")


def test_postgres_persists_and_has_a_pg_isready_healthcheck(main, services):
    pg = services["postgres"]
    assert ":" in pg["image"] and not pg["image"].endswith(":latest")
    _named_volume(main, pg, "/var/lib/postgresql/data")
    assert "pg_isready" in " ".join(argv(pg["healthcheck"]["test"]))
    assert set(env_of(pg)) <= THIRD_PARTY_ENV["postgres"]


def test_redis_persists_never_evicts_and_has_a_ping_healthcheck(main, services):
    redis = services["redis"]
    cmd = argv(redis["command"])
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    _named_volume(main, redis, "/data")
    assert argv(redis["healthcheck"]["test"])[-2:] == ["redis-cli", "ping"]


def test_migrate_is_a_one_shot_upgrade_after_postgres(services):
    mig = services["migrate"]
    assert argv(mig["command"]) == ["pretextlab", "db", "upgrade"]
    assert mig.get("restart", "no") == "no"
    assert mig["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["api", "worker", "reconciler", "worker-cpu"])
def test_services_start_after_healthy_stores_and_a_finished_migration(services, name):
    dep = services[name]["depends_on"]
    assert dep["postgres"]["condition"] == "service_healthy"
    assert dep["redis"]["condition"] == "service_healthy"
    assert dep["migrate"]["condition"] == "service_completed_successfully"


def test_api_on_8000_with_an_optional_env_token_and_a_healthz_healthcheck(services):
    api = services["api"]
    assert any(str(p).split(":")[-1] == "8000" for p in api["ports"])
    # ${PRETEXTLAB_API_TOKENS:-}: the env token is passed when set, and optional (a named token
    # suffices); authentication itself is never turned off by compose.
    raw = load(COMPOSE)["services"]["api"]["environment"]["PRETEXTLAB_API_TOKENS"]
    assert raw == "${PRETEXTLAB_API_TOKENS:-}"
    assert env_of(api)["PRETEXTLAB_API_TOKENS"] == DUMMY_ENV["PRETEXTLAB_API_TOKENS"]
    assert "PRETEXTLAB_AUTH" not in env_of(api)
    # The healthcheck comes from the image and probes /healthz on the port uvicorn binds.
    assert "healthcheck" not in api or not api["healthcheck"].get("disable")
    hc = [a for i, a in parse_dockerfile(API_DOCKERFILE) if i == "HEALTHCHECK"]
    assert len(hc) == 1 and "/healthz" in hc[0] and "127.0.0.1:8000" in hc[0]
    _, cmd = image_defaults(API_DOCKERFILE)
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def _gpu_requests(svc: dict) -> list[dict]:
    return (svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or [])


def _queues(svc: dict) -> list[str]:
    cmd = argv(svc["command"])
    return cmd[cmd.index("--queues") + 1].split(",")


def _gpus(svc: dict) -> str:
    """What a GPU worker reserves: several GPUs by `count` (the host's, `all` by default)."""
    (req,) = _gpu_requests(svc)
    assert req["driver"] == "nvidia" and "gpu" in req["capabilities"]
    assert "device_ids" not in req, "one worker per host owns its GPUs: reserve them by count"
    return str(req["count"])


def _nccl_ready(svc: dict) -> None:
    """NCCL between rank processes needs far more /dev/shm than Docker's 64 MB (or the host's IPC)."""
    size = str(svc.get("shm_size", ""))
    assert svc.get("ipc") == "host" or (size.endswith("gb") and int(size[:-2]) >= 8), size
    assert svc["ulimits"]["memlock"] == -1


def test_worker_owns_the_hosts_gpus_one_slot_each(services, monkeypatch):
    w = services["worker"]
    assert _gpus(w) == "all"  # default of GPU_COUNT
    assert _gpus(rendered(COMPOSE, {"GPU_COUNT": "4"})["services"]["worker"]) == "4"  # configurable
    _nccl_ready(w)
    cmd = argv(w["command"])
    # no --gpus/--slots/--concurrency: the worker takes every GPU its container sees, one slot each
    assert not {"--gpus", "--slots", "--concurrency"} & set(cmd)
    assert "gpu" in _queues(w)
    assert _queues(rendered(COMPOSE, {"GPU_WORKER_QUEUES": "gpu"})["services"]["worker"]) == ["gpu"]
    from worker.slots import resolve_slots

    # what that default means inside the container: every visible GPU (here, 4 made visible)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert resolve_slots(None, None).ids == (0, 1, 2, 3)


def test_cpu_worker_takes_the_cpu_queue_without_a_gpu(services):
    w = services["worker-cpu"]
    assert _queues(w) == ["cpu"] and not _gpu_requests(w)


def test_worker_host_runs_one_worker_owning_its_gpus():
    host = rendered(WORKER_HOST)["services"]
    assert set(host) == {"worker"}
    assert _gpus(host["worker"]) == "all"
    assert _gpus(rendered(WORKER_HOST, {"GPU_COUNT": "2"})["services"]["worker"]) == "2"
    _nccl_ready(host["worker"])
    assert "gpu" in _queues(host["worker"])
    env = env_of(host["worker"])
    assert env["PRETEXTLAB_DATABASE_URL"] == DUMMY_ENV["PRETEXTLAB_DATABASE_URL"]
    assert env["PRETEXTLAB_BROKER_URL"] == DUMMY_ENV["PRETEXTLAB_BROKER_URL"]
    # Only network endpoints: the object store by URL, every volume a local named one (no NFS mount).
    assert env["PRETEXTLAB_ARTIFACT_URL"] == DUMMY_ENV["PRETEXTLAB_ARTIFACT_URL"]
    assert env["PRETEXTLAB_S3_ENDPOINT_URL"] == DUMMY_ENV["PRETEXTLAB_S3_ENDPOINT_URL"]
    assert env["AWS_SECRET_ACCESS_KEY"] == DUMMY_ENV["MINIO_ROOT_PASSWORD"]
    named = set(load(WORKER_HOST).get("volumes") or {})
    assert {v.split(":")[0] for v in host["worker"]["volumes"]} <= named


def test_exactly_one_beat_in_a_deployment(services):
    beats = [n for n, s in services.items() if "--beat" in argv(s.get("command") or [])]
    assert beats == ["reconciler"]
    assert not any("--beat" in argv(s.get("command") or []) for s in rendered(WORKER_HOST)["services"].values())
    from worker.celery_app import CONTROL_QUEUE

    # It consumes only the control queue, so a reconcile never waits behind a training job.
    assert _queues(services["reconciler"]) == [CONTROL_QUEUE]


def test_minio_is_the_artifact_store_with_a_volume_a_healthcheck_and_a_bucket_from_migrate(main, services):
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio:RELEASE.") and not minio["image"].endswith(":latest")
    _named_volume(main, minio, "/data")
    assert argv(minio["healthcheck"]["test"])[-3:] == ["mc", "ready", "local"]
    # Credentials from .env: the password is required, the services use the same pair.
    assert env_of(minio)["MINIO_ROOT_PASSWORD"] == DUMMY_ENV["MINIO_ROOT_PASSWORD"]
    assert "MINIO_ROOT_PASSWORD:?" in COMPOSE.read_text() and set(env_of(minio)) <= THIRD_PARTY_ENV["minio"]
    for name in ("api", "worker", "worker-cpu", "reconciler", "migrate"):
        env = env_of(services[name])
        assert env["PRETEXTLAB_ARTIFACT_URL"] == "s3://pretextlab/artifacts", name
        assert env["PRETEXTLAB_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            env_of(minio)["MINIO_ROOT_USER"], env_of(minio)["MINIO_ROOT_PASSWORD"]), name
    assert services["migrate"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert argv(services["migrate"]["command"]) == ["pretextlab", "db", "upgrade"]  # upgrades, then the bucket
    assert env_of(services["api"])["PRETEXTLAB_S3_PUBLIC_ENDPOINT_URL"] == DUMMY_ENV["PRETEXTLAB_S3_PUBLIC_ENDPOINT_URL"]
    for name in ("api", "worker", "reconciler"):
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_artifacts_and_datasets_are_shared_named_volumes(main, services):
    for name in ("api", "worker", "worker-cpu"):
        env = env_of(services[name])
        assert _named_volume(main, services[name], env["PRETEXTLAB_ARTIFACT_ROOT"]) == "artifacts"
        assert _named_volume(main, services[name], env["PRETEXTLAB_DATA_ROOT"]) == "datasets"
    # Workers write, the API reads; every container agrees on the paths.
    roots = {(env_of(s)["PRETEXTLAB_ARTIFACT_ROOT"], env_of(s)["PRETEXTLAB_DATA_ROOT"])
             for n, s in services.items() if n not in ("postgres", "redis", "minio")}
    roots.add(tuple(env_of(rendered(WORKER_HOST)["services"]["worker"])[k]
                    for k in ("PRETEXTLAB_ARTIFACT_ROOT", "PRETEXTLAB_DATA_ROOT")))
    assert len(roots) == 1


# -- commands name real parts of the project -----------------------------------------------------
def _our_services():
    for compose_file in (COMPOSE, WORKER_HOST):
        for name, svc in rendered(compose_file)["services"].items():
            dockerfile = our_dockerfile(svc, compose_file)
            if dockerfile is not None:
                yield f"{compose_file.name}:{name}", svc, dockerfile


def _check_pretextlab_argv(cmd: list[str]) -> None:
    from worker.cli import PASSTHROUGH, build_parser

    assert cmd[0] == "pretextlab", cmd
    args = build_parser().parse_args(cmd[1:])  # argparse exits (SystemExit) on an unknown command
    if args.command == "worker":
        from worker.celery_app import CONTROL_QUEUE, QUEUES

        queues = (args.queues or "").split(",")
        assert queues and set(queues) <= {*QUEUES, CONTROL_QUEUE}, queues
        assert args.concurrency >= 1
    if args.command in PASSTHROUGH and cmd[1:3] == ["data", "prepare"]:
        from ssl_core.specs import DATASETS

        assert cmd[3] in DATASETS, cmd


def test_every_compose_command_is_a_real_pretextlab_command():
    seen = 0
    for where, svc, dockerfile in _our_services():
        assert dockerfile.is_file(), f"{where}: {dockerfile} does not exist"
        entry, cmd = image_defaults(dockerfile)
        if "entrypoint" in svc:
            entry = argv(svc["entrypoint"])
        if "command" in svc:
            cmd = argv(svc["command"])
        assert cmd, where
        if cmd[0] == "pretextlab":
            _check_pretextlab_argv(cmd)
            seen += 1
        else:
            assert cmd[:2] == ["uvicorn", "api.main:app"], f"{where}: {cmd}"
        if entry:
            assert entry == ["pretextlab-worker-entrypoint"], f"{where}: {entry}"
    assert seen >= 5  # migrate, worker, reconciler, worker-cpu, worker-host worker


def test_the_worker_entrypoint_prepares_fashion_mnist_then_execs_the_command():
    copies = [a.split() for i, a in parse_dockerfile(WORKER_DOCKERFILE) if i == "COPY"]
    (src,) = [c[0] for c in copies if c[-1] == "/usr/local/bin/pretextlab-worker-entrypoint"]
    script = ROOT / src
    assert script.is_file()
    subprocess.run(["sh", "-n", str(script)], check=True)
    lines = [ln.strip() for ln in script.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert "set -eu" in lines  # a failed prepare stops the container instead of training on nothing
    prepare = [shlex.split(ln) for ln in lines if ln.startswith("pretextlab ")]
    assert prepare == [["pretextlab", "data", "prepare", "fashion_mnist"]]
    for cmd in prepare:
        _check_pretextlab_argv(cmd)
    assert lines[-1] == 'exec "$@"'  # the worker becomes PID 1's child directly and gets SIGTERM


def test_commands_run_in_the_api_image_import_without_torch():
    """The API image has no torch: uvicorn's app, `pretextlab db upgrade` and the reconciler's
    Celery worker must import with torch unavailable."""
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision'): sys.modules[m] = None  # import torch -> ImportError\n"
        "import api.main\n"
        "assert api.main.app is not None\n"
        "from worker.cli import build_parser\n"
        "build_parser().parse_args(['db', 'upgrade'])\n"
        "import api.db.session, worker.celery_app, worker.tasks, worker.reconciler, worker.runner\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETEXTLAB_")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_the_api_healthcheck_is_valid_python_probing_healthz():
    (hc,) = [a for i, a in parse_dockerfile(API_DOCKERFILE) if i == "HEALTHCHECK"]
    probe = exec_form(hc[hc.index("CMD") + 3:])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "<healthcheck>", "exec")
    assert "urllib.request" in probe[2] and "/healthz" in probe[2]


def test_install_deps_base_has_no_torch_and_ml_has_the_cuda_stack():
    mod = load_script("docker/install_deps.py", "_install_deps")
    name = lambda r: re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower()  # noqa: E731
    base = {name(r) for r in mod.requirements(str(ROOT / "pyproject.toml"), [])}
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "celery"} <= base
    assert not base & {"torch", "torchvision", "nvidia-cudnn-cu12"}
    ml = {name(r) for r in mod.requirements(str(ROOT / "pyproject.toml"), ["ml"])}
    assert {"torch", "torchvision", "safetensors"} <= ml
    with pytest.raises(SystemExit):
        mod.requirements(str(ROOT / "pyproject.toml"), ["no-such-extra"])


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names pip installs for ``requirements`` (extras included), read from the
    metadata of what is installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for e in [""] + sorted(req.extras):
            if (name, e) in seen:
                continue
            seen.add((name, e))
            try:
                sub = metadata.requires(req.name) or []
            except metadata.PackageNotFoundError:
                continue
            todo += [(Requirement(s), e) for s in sub]
    return {n for n, _ in seen}


def test_the_base_dependencies_carry_what_the_api_image_imports():
    """The API image installs the base dependencies only, so what the API, `db upgrade` and the
    reconciler import must come with them -- not from pytest's own dependencies in this venv.
    Celery's Redis transport (kombu.transport.redis) imports ``redis`` and ``packaging``: they
    come with ``celery[redis]``; PostgreSQL needs psycopg's bundled libpq (the slim image has none)."""
    mod = load_script("docker/install_deps.py", "_install_deps")
    installed = _closure(mod.requirements(str(ROOT / "pyproject.toml"), []))
    # optuna: `db upgrade` makes its tables (migration 0005) and the reconciler drives the sweeps
    needed = {"redis", "packaging", "psycopg-binary", "uvicorn", "alembic", "kombu", "pydantic-settings", "optuna"}
    assert needed <= installed, f"not installed by the base dependencies: {sorted(needed - installed)}"
    assert not installed & {"torch", "torchvision"}


# -- Dockerfiles ---------------------------------------------------------------------------------
def _dockerignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            excluded = not neg
    return excluded


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=["api", "worker"])
def test_dockerfile_pins_installs_deps_first_and_runs_as_non_root(dockerfile):
    ins = parse_dockerfile(dockerfile)
    froms = [a.split()[0] for i, a in ins if i == "FROM"]
    assert froms
    for image in froms:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned base image {image}"
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root USER"
    assert [i for i, _ in ins].index("USER") > max(n for n, (i, _) in enumerate(ins) if i == "RUN"), \
        "USER must come after the last RUN that needs root"
    # The dependency install sees only pyproject.toml and the installer: source edits keep the layer.
    deps_at = next(n for n, (i, a) in enumerate(ins) if i == "RUN" and "install_deps.py" in a)
    source_at = next(n for n, (i, a) in enumerate(ins) if i == "COPY" and re.search(r"\b(api|worker|ssl_core)\b", a))
    assert deps_at < source_at
    early = [a.split()[:-1] for i, a in ins[:deps_at] if i == "COPY"]
    assert sorted(s for srcs in early for s in srcs) == ["docker/install_deps.py", "pyproject.toml"]
    # Every COPY source exists and is inside the build context that .dockerignore leaves.
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for i, a in ins:
        if i == "COPY":
            assert not a.startswith("--from"), "single-stage images copy from the context only"
            for src in [s for s in a.split() if not s.startswith("--")][:-1]:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such file"
                assert not _dockerignored(src, patterns), f"{dockerfile.name}: {src} is in .dockerignore"
    copied = {s.rstrip("/") for i, a in ins if i == "COPY" for s in a.split()[:-1]}
    assert {"api", "worker", "ssl_core", "migrations", "pyproject.toml", "alembic.ini"} <= copied


def test_dockerignore_keeps_local_state_out():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "data/fashion_mnist/x.gz", "artifacts/jobs/1/last.pt",
                 "api/__pycache__/main.cpython-312.pyc", ".env", "pretextlab.sqlite", "tests/test_deploy.py"):
        assert _dockerignored(path, patterns), path
    for path in ("api/main.py", "worker/cli.py", "ssl_core/specs.py", "migrations/env.py", "pyproject.toml"):
        assert not _dockerignored(path, patterns), path


def test_api_image_installs_no_torch_and_no_cuda():
    ins = parse_dockerfile(API_DOCKERFILE)
    (base,) = [a for i, a in ins if i == "FROM"]
    assert base.startswith("python:") and "slim" in base
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "--extra" not in runs and "[ml]" not in runs and ".[" not in runs
    assert not re.search(r"pip install[^&]*\btorch", runs) and "cuda" not in runs.lower()
    assert "pip install --no-deps" in runs  # the project itself, without pulling extras


def test_worker_image_has_cuda_torch_and_fashion_mnist():
    ins = parse_dockerfile(WORKER_DOCKERFILE)
    (base,) = [a for i, a in ins if i == "FROM"]
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "dataset-fashion-mnist" in runs
    assert "--extra ml" in runs and "--keep torch" in runs and "--keep torchvision" in runs
    assert "pip install --no-deps" in runs


# -- environment variables are settings ------------------------------------------------------------
def test_every_environment_variable_is_a_setting():
    known = settings_env_names()
    for where, svc, dockerfile in _our_services():
        unknown = set(env_of(svc)) - known - BOTO3_ENV
        assert not unknown, f"{where} sets {sorted(unknown)}, which no setting reads"
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        for i, a in parse_dockerfile(dockerfile):
            if i == "ENV":
                names = {kv.split("=", 1)[0] for kv in shlex.split(a)}
                ours = {n for n in names if n.startswith("PRETEXTLAB_")}
                assert ours <= known, f"{dockerfile.name}: {sorted(ours - known)}"


def test_compose_fallbacks_are_the_settings_defaults(monkeypatch):
    """A ${PRETEXTLAB_X:-value} fallback repeats the setting's default; this keeps them equal."""
    from api.settings import Settings

    for k in list(os.environ):
        if k.startswith("PRETEXTLAB_"):
            monkeypatch.delenv(k)
    defaults = Settings()
    checked = 0
    for compose_file in (COMPOSE, WORKER_HOST):
        for var, fallbacks in variables(compose_file).items():
            if not var.startswith("PRETEXTLAB_"):
                continue
            field = var.removeprefix("PRETEXTLAB_").lower()
            for value in fallbacks - {""}:
                monkeypatch.setenv(var, value)
                assert getattr(Settings(), field) == getattr(defaults, field), f"{compose_file.name}: {var}:-{value}"
                monkeypatch.delenv(var)
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize("service", ["api", "worker", "reconciler", "migrate"])
def test_the_settings_accept_each_service_environment(monkeypatch, services, service):
    from api.settings import Settings

    for k in list(os.environ):
        if k.startswith("PRETEXTLAB_"):
            monkeypatch.delenv(k)
    for k, v in env_of(services[service]).items():
        monkeypatch.setenv(k, v)
    s = Settings()
    if service == "migrate":  # the superuser migrates and makes the app role ...
        assert s.database_url == "postgresql+psycopg://pretextlab:test-password@postgres:5432/pretextlab"
        assert s.db_app_password.get_secret_value() == "test-app-password"
    else:  # ... which everything else connects as
        assert s.database_url == "postgresql+psycopg://pretextlab_app:test-app-password@postgres:5432/pretextlab"
        assert s.db_app_password is None
    assert s.broker_url == "redis://:test-redis-password@redis:6379/0"  # Celery mode, with the password
    if service == "api":
        assert s.token_list() == ["test-token"] and s.auth_enabled  # passed on when .env sets it


def test_env_example_documents_every_variable_and_nothing_else():
    # COMPOSE_PROFILES is read by docker compose itself (it turns on the gpuN / cpu profiles).
    used = set(variables(COMPOSE)) | set(variables(WORKER_HOST)) | {"COMPOSE_PROFILES"}
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert used - documented == set(), f"add to .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f".env.example names variables no compose file reads: {sorted(documented - used)}"
    # The settings it names are real settings.
    assert {v for v in documented if v.startswith("PRETEXTLAB_")} <= settings_env_names()


# -- the closed network (docs/security.md) -----------------------------------------------------------
def test_redis_is_patched_and_needs_a_password(services, tmp_path):
    redis = services["redis"]
    version = tuple(int(x) for x in redis["image"].split(":")[1].split("-")[0].split("."))
    assert version >= (7, 4, 6), "Redis < 7.4.6 has a Lua remote-code-execution bug (CVE-2025-49844)"
    cmd = argv(redis["command"])
    assert cmd[cmd.index("--requirepass") + 1] == DUMMY_ENV["REDIS_PASSWORD"]
    assert env_of(redis)["REDISCLI_AUTH"] == DUMMY_ENV["REDIS_PASSWORD"]  # the healthcheck authenticates
    for name, svc in services.items():
        broker = env_of(svc).get("PRETEXTLAB_BROKER_URL")
        if broker is not None:
            assert broker == f"redis://:{DUMMY_ENV['REDIS_PASSWORD']}@redis:6379/0", name
    for missing in ("REDIS_PASSWORD", "PRETEXTLAB_DB_APP_PASSWORD"):
        res = run_compose(tmp_path, COMPOSE, {k: v for k, v in DUMMY_ENV.items() if k != missing})
        assert res.returncode != 0 and missing in res.stderr, missing


def test_only_migrate_connects_as_the_superuser(services):
    from sqlalchemy.engine import make_url

    for name, svc in services.items():
        url = env_of(svc).get("PRETEXTLAB_DATABASE_URL")
        if url is None:
            continue
        expected = "pretextlab" if name == "migrate" else "pretextlab_app"
        assert make_url(url).username == expected, name
    assert env_of(services["migrate"])["PRETEXTLAB_DB_APP_PASSWORD"] == DUMMY_ENV["PRETEXTLAB_DB_APP_PASSWORD"]
    from api.db.roles import APP_ROLE

    assert APP_ROLE == "pretextlab_app"


def test_the_api_mounts_artifacts_read_only_and_the_sweep_writes(services):
    def mode(svc: dict, target: str) -> str:
        (v,) = [v for v in svc["volumes"] if v.split(":")[1] == target]
        return v.split(":")[2] if v.count(":") == 2 else "rw"

    root = env_of(services["api"])["PRETEXTLAB_ARTIFACT_ROOT"]
    assert mode(services["api"], root) == "ro"
    assert mode(services["reconciler"], root) == "rw"  # pretextlab.prune removes folders
    for name in ("worker", "worker-cpu"):
        assert mode(services[name], root) == "rw"


def test_celery_remote_control_is_off():
    from worker.celery_app import make_app

    assert make_app().conf.worker_enable_remote_control is False


def test_the_api_image_declares_its_bind_so_auth_off_is_refused():
    from api.settings import Settings

    env = dict(kv.split("=", 1) for i, a in parse_dockerfile(API_DOCKERFILE) if i == "ENV" for kv in shlex.split(a))
    _, cmd = image_defaults(API_DOCKERFILE)
    assert env["PRETEXTLAB_HOST"] == cmd[cmd.index("--host") + 1] == "0.0.0.0"
    s = Settings(host=env["PRETEXTLAB_HOST"], auth="off", database_url="sqlite://")
    assert "PRETEXTLAB_AUTH=off is refused" in s.auth_refusal(0)
    assert "no API token" in Settings(host="0.0.0.0", database_url="sqlite://").auth_refusal(0)


def test_the_compose_api_without_an_env_token_starts_once_a_named_token_exists(monkeypatch, tmp_path):
    """The api service's own environment (no PRETEXTLAB_API_TOKENS in .env) on the image's bind:
    refused with the bootstrap command in the message, then, after `pretextlab token create admin
    --admin` (the documented bootstrap, through the real CLI), the app starts and takes that token."""
    from fastapi.testclient import TestClient

    from api.db.session import upgrade
    from api.main import AuthRefused, create_app
    from api.settings import Settings

    for k in list(os.environ):
        if k.startswith("PRETEXTLAB_"):
            monkeypatch.delenv(k)
    api = rendered(COMPOSE, {"PRETEXTLAB_API_TOKENS": ""})["services"]["api"]
    image_env = dict(kv.split("=", 1) for i, a in parse_dockerfile(API_DOCKERFILE) if i == "ENV"
                     for kv in shlex.split(a))
    db = f"sqlite:///{tmp_path / 'jobs.db'}"  # PostgreSQL in compose; the same rows here
    for k, v in {**{k: v for k, v in image_env.items() if k.startswith("PRETEXTLAB_")}, **env_of(api),
                 "PRETEXTLAB_DATABASE_URL": db, "PRETEXTLAB_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
                 "PRETEXTLAB_ARTIFACT_URL": "", "PRETEXTLAB_BROKER_URL": ""}.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    assert settings.token_list() == [] and settings.auth_enabled and settings.host == "0.0.0.0"
    upgrade(db)
    with pytest.raises(AuthRefused, match="pretextlab token create NAME --admin"):
        with TestClient(create_app(settings)):
            pass
    bootstrap = argv(re.search(r"docker compose run --rm api (pretextlab token create \S+ --admin)",
                               (ROOT / "docs" / "deployment.md").read_text()).group(1))
    assert bootstrap == ["pretextlab", "token", "create", "admin", "--admin"]
    out = subprocess.run([sys.executable, "-m", "worker.cli", *bootstrap[1:]], cwd=ROOT, env=dict(os.environ),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    token = re.search(r"ptl_\S+", out.stdout).group(0)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/jobs").status_code == 401
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_deployment_docs_cover_tls_for_cross_host_links():
    text = (ROOT / "docs" / "deployment.md").read_text() + ENV_EXAMPLE.read_text()
    assert "sslmode=verify-full" in text and "rediss://" in text
