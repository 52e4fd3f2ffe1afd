"""Checkpoints hold no code and are resumed only by the run that wrote them.

A planted pickle (``last.pt`` of the old format, or pickle bytes named ``last.safetensors``) is
never executed; a checkpoint recording another run key is set aside and the run starts fresh.
"""

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from ssl_core.checkpoint import (LAST_CHECKPOINT, CheckpointFormatError, load_checkpoint, read_checkpoint_header,
                                 save_checkpoint)
from ssl_core.specs import PretrainSpec
from ssl_core.tensor_tree import TreeFormatError, flatten, same_tree, unflatten
from ssl_core.train import pretrain

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def spec(epochs: int = 1) -> PretrainSpec:
    raw = json.loads((EXAMPLES / "rotation.json").read_text())
    return PretrainSpec.model_validate({**raw, "epochs": epochs})


class Payload:
    """Unpickling this writes a marker file: what a planted checkpoint would do to a worker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class Steps:
    def __init__(self):
        self.steps = []

    def metrics(self, step, values, epoch=None):
        self.steps.append(step)

    def progress(self, **kw):
        pass

    def artifact(self, name, path, kind):
        pass

    def should_stop(self):
        return False

    def flush(self):
        pass


def test_planted_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model": Payload(marker), "step": 2}, out / "checkpoints" / "last.pt")  # the old file name
    (out / LAST_CHECKPOINT).write_bytes(pickle.dumps({"x": Payload(marker)}))  # pickle under the new name
    sink = Steps()
    r = pretrain(spec(), out, sink=sink, resume=True)
    assert r.completed and sink.steps[0] == 1  # started fresh
    assert not marker.exists()
    assert list((out / "checkpoints").glob("last.untrusted-*.safetensors"))  # the fake one, set aside
    assert read_checkpoint_header(out / LAST_CHECKPOINT)["step"] == r.step  # the new one is a real checkpoint
    torch.load(out / "checkpoints" / "last.pt", weights_only=False)  # the planted file really is hostile
    assert marker.read_text() == "pwned"


def test_a_checkpoint_of_another_run_key_is_set_aside(tmp_path, caplog):
    stop_after_two = iter([False, False] + [True] * 100)
    first = pretrain(spec(2), tmp_path, run_key="job-7-aaaa", should_stop=lambda: next(stop_after_two))
    assert not first.completed and read_checkpoint_header(first.checkpoint_path)["run_key"] == "job-7-aaaa"

    sink = Steps()
    with caplog.at_level(logging.WARNING, logger="pretextlab.checkpoint"):
        r = pretrain(spec(2), tmp_path, sink=sink, run_key="job-7-bbbb")
    assert r.completed and sink.steps[0] == 1  # not resumed
    assert "run key differs" in caplog.text and "starts fresh" in caplog.text
    aside = list((tmp_path / "checkpoints").glob("last.untrusted-*.safetensors"))
    assert len(aside) == 1 and read_checkpoint_header(aside[0])["run_key"] == "job-7-aaaa"
    assert read_checkpoint_header(r.checkpoint_path)["run_key"] == "job-7-bbbb"


def test_the_same_run_key_resumes(tmp_path):
    stop_after_two = iter([False, False] + [True] * 100)
    pretrain(spec(2), tmp_path, run_key="k1", should_stop=lambda: next(stop_after_two))
    sink = Steps()
    r = pretrain(spec(2), tmp_path, sink=sink, run_key="k1")
    assert r.completed and sink.steps[0] == 3  # continued after step 2
    assert not list((tmp_path / "checkpoints").glob("last.untrusted-*"))


def test_state_round_trips_through_tensors_and_json(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "python": (3, (1, 2, 3), None), "nan": float("nan") != 0,
             "weights": model.state_dict(), "tied": [model.weight, model.weight], "run_key": None}
    path = save_checkpoint(tmp_path / "ck.safetensors", state)
    back = load_checkpoint(path)
    assert same_tree(back, {**state, "tied": [model.weight.detach(), model.weight.detach()]})
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys survive JSON
    opt.load_state_dict(back["optimizer"])


def test_only_tensors_and_plain_values_are_stored_or_read(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match="object cannot be stored"):
        flatten({"a": object()})
    with pytest.raises(TypeError, match="int64"):
        flatten({"a": np.int64(3)})
    with pytest.raises(TreeFormatError):
        unflatten({"__tensor__": "missing"}, {})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointFormatError, match="format"):
        read_checkpoint_header(bad)
