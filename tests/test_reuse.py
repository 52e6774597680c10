"""--reuse: a finished stage of another run, trained the same way, is copied instead of trained again."""
import json

import pytest
import torch

from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.pipeline import run_recipe
from longtail.errors import ConfigError

from test_engine import tiny_recipe

LWS = {"name": "lws", "method": "lws", "init": "ce", "sampler": "class_balanced", "samples_per_class": 2, "epochs": 1,
       "batch_size": 32, "optim": {"lr": 0.2}, "augment": [{"op": "normalize"}]}


def with_lws(base, **ce):
    r = base.to_dict()
    r["stages"][0].update(ce)
    r["stages"].append(dict(LWS))
    return recipe_from_dict(r)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("teacher")
    run_recipe(tiny_recipe(epochs=2), out, data=data)
    return out


def events(path):
    return [json.loads(l).get("event") for l in path.read_text().splitlines()]


def test_an_identical_stage_is_copied_and_the_next_one_trains_on_it(teacher, data, tmp_path):
    res = run_recipe(with_lws(tiny_recipe(epochs=2)), tmp_path, data=data, reuse=[teacher])
    assert (tmp_path / "ce" / "final.pt").read_bytes() == (teacher / "ce" / "final.pt").read_bytes()
    assert events(tmp_path / "ce" / "metrics.jsonl")[-1] == "reused"
    note = json.loads((tmp_path / "ce" / "metrics.jsonl").read_text().splitlines()[-1])
    assert note["from"] == str(teacher / "ce")
    assert res["stages"]["ce"] == load_checkpoint(teacher / "ce" / "final.pt")["metrics"]  # its own record, segments too
    assert "reused" not in events(tmp_path / "lws" / "metrics.jsonl") and res["stages"]["lws"]["steps"] > 0
    lws = load_checkpoint(tmp_path / "lws" / "final.pt")["model"]
    ce = load_checkpoint(teacher / "ce" / "final.pt")["model"]
    assert torch.equal(lws["heads.main.fc.weight"], ce["heads.main.fc.weight"])  # LWS on the reused CE's head


@pytest.mark.parametrize("change", [{"seed": 1}, {"ce": {"optim": {"lr": 0.05, "weight_decay": 5e-4}}}], ids=["seed", "lr"])
def test_a_stage_trained_otherwise_is_trained_again_and_so_is_what_builds_on_it(teacher, data, tmp_path, change):
    r = with_lws(tiny_recipe(epochs=2), **change.get("ce", {}))
    if "seed" in change:
        r.runtime.seed = change["seed"]
    other = tmp_path / "other"
    run_recipe(with_lws(tiny_recipe(epochs=2)), other, data=data, reuse=[teacher])  # a source with both stages done
    run_recipe(r, tmp_path / "run", data=data, reuse=[other])
    assert "reused" not in events(tmp_path / "run" / "ce" / "metrics.jsonl")
    assert "reused" not in events(tmp_path / "run" / "lws" / "metrics.jsonl")  # its own settings match, its CE does not


def test_a_stage_that_left_the_tree_names_the_restore_command(teacher, data, tmp_path):
    slim = tmp_path / "slim"
    (slim / "ce").mkdir(parents=True)
    (slim / "checkpoints.json").write_text(json.dumps({"ce/final.pt": {"commit": "0" * 40, "bytes": 1, "sha256": "x"}}))
    with pytest.raises(ConfigError, match=r"^--reuse .*slim: its stage 'ce' is in the history, not the tree; "
                                          r"bring it back with: python scripts/checkpoints.py restore .*slim$"):
        run_recipe(tiny_recipe(epochs=2), tmp_path / "run", data=data, reuse=[slim])
