"""Property-based fuzz of the API: hundreds of generated requests, none answers 5xx.

Bodies mix random JSON, raw bytes and near-valid specs with one field replaced by garbage;
queries and artifact names are arbitrary text. Every answer must be a non-5xx with, for errors,
the JSON error shape.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.db.artifacts import register_artifact
from api.db.metrics import write_metrics
from api.db.session import upgrade
from api.main import create_app
from api.settings import Settings
from api_helpers import PRETRAIN

EXAMPLES = 110  # x 4 properties = 440 requests, about 15 s on SQLite
COUNT = {"requests": 0}
RAN: set[str] = set()

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=30)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                           max_leaves=12)
SPEC_KEYS = ["kind", "method", "backbone", "data", "augment", "optim", "epochs", "batch_size", "seed", "device",
             "precision", "eval", "log_every", "source_job_id", "weights", "baseline", "protocol", "checkpoint_every"]
NESTED = {"method": ["name", "temperature", "queue_size", "version", "num_classes", "patch_size", "num_permutations"],
          "data": ["dataset", "path", "image_size", "subset", "split", "channels"],
          "backbone": ["name", "width", "cifar_stem"]}


@st.composite
def near_valid_spec(draw):
    spec = json.loads(json.dumps(PRETRAIN))
    if draw(st.booleans()):
        spec = {"kind": "evaluate", "data": {"dataset": "synthetic"},
                draw(st.sampled_from(["weights", "source_job_id", "baseline"])): draw(json_values)}
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(SPEC_KEYS))
        if key in NESTED and draw(st.booleans()):
            inner = spec.get(key) if isinstance(spec.get(key), dict) else {}
            inner[draw(st.sampled_from(NESTED[key]))] = draw(json_values)
            spec[key] = inner
        else:
            spec[key] = draw(json_values)
    return spec


bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"spec": near_valid_spec()},
                          optional={"kind": json_values, "name": json_values, "tags": json_values,
                                    "priority": json_values, "extra": json_values}),
    st.builds(lambda s: {"spec": s}, near_valid_spec()),
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'fuzz.sqlite'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, artifact_root=tmp / "artifacts", data_root=tmp / "data",
                              broker_url=None, api_tokens=None, auth="off", max_body_bytes=64 * 1024))
    with TestClient(app) as c:
        job = c.post("/v1/jobs", json={"spec": PRETRAIN}).json()["id"]
        with app.state.sessionmaker() as s:
            folder = app.state.settings.job_dir(job)
        folder.mkdir(parents=True)
        (folder / "backbone.safetensors").write_bytes(b"w" * 100)
        with app.state.sessionmaker() as s:
            register_artifact(s, job, "backbone.safetensors", "backbone", 100)
            write_metrics(s, job, [{"name": "train/loss", "step": i, "value": 1.0 / (i + 1)} for i in range(3000)])
            s.commit()
        yield c, job
    if len(RAN) == 4:  # the whole file ran (not a -k selection): hundreds of requests, or it proves little
        assert COUNT["requests"] >= 300, COUNT


def check(r, test: str) -> None:
    COUNT["requests"] += 1
    RAN.add(test)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=bodies, key=st.none() | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=250),
       raw=st.none() | st.binary(max_size=300))
def test_fuzz_submit(fuzz_client, body, key, raw):
    c, _ = fuzz_client
    headers = {"Idempotency-Key": key} if key is not None else {}
    if raw is not None:
        r = c.post("/v1/jobs", content=raw, headers={**headers, "content-type": "application/json"})
    else:
        r = c.post("/v1/jobs", content=json.dumps(body).encode(), headers={**headers, "content-type": "application/json"})
    check(r, 'submit')
    if r.status_code in (200, 201):
        assert c.get(f"/v1/jobs/{r.json()['id']}").status_code == 200


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["status", "kind", "method", "dataset", "tag", "cursor", "limit", "x"]),
                              text | st.integers(-(2**70), 2**70).map(str), max_size=5))
def test_fuzz_list(fuzz_client, params):
    c, _ = fuzz_client
    check(c.get("/v1/jobs", params=params), 'list')


@FUZZ
@given(job=st.one_of(st.just(None), st.integers(-(2**70), 2**70).map(str), text),
       params=st.dictionaries(st.sampled_from(["name", "start_step", "end_step", "max_points"]),
                              st.sampled_from(["train/loss"]) | text | st.integers(-(2**70), 2**70).map(str),
                              max_size=4))
def test_fuzz_metrics(fuzz_client, job, params):
    c, real = fuzz_client
    job_part = str(real) if job is None else quote(job, safe="")
    check(c.get(f"/v1/jobs/{job_part}/metrics", params=params), 'metrics')


@FUZZ
@given(name=st.one_of(text, st.sampled_from(["backbone.safetensors", "../../etc/passwd", "/etc/passwd", "..", "%00",
                                             "a/../../b", "backbone.safetensors/..", "\\..\\x"])),
       encode=st.booleans(), job=st.one_of(st.just(None), st.integers(-5, 2**64).map(str)))
def test_fuzz_artifacts(fuzz_client, name, encode, job):
    c, real = fuzz_client
    job_part = str(real) if job is None else job
    path_name = quote(name, safe="" if encode else "/")
    check(c.get(f"/v1/jobs/{job_part}/artifacts/{path_name}"), 'artifacts')
    check(c.get(f"/v1/jobs/{job_part}/artifacts"), 'artifacts')
