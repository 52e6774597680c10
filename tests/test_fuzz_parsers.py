"""Fuzzing the parsers (split lists, recipes, overrides) with hypothesis: any input is parsed or refused with
a LongtailError, never a traceback. Kept apart from test_reliability.py, so a missing hypothesis skips only these."""
from __future__ import annotations

import numpy as np
import pytest

from longtail.errors import LongtailError

# --------------------------------------------------------------------------- fuzzing the parsers

pytest.importorskip("hypothesis")  # only these fuzz tests need it; the reliability matrix never skips
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_split_line = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(["a/b.jpg", "../x.jpg", "/abs.jpg", "c:x", "é/ü.png", "a\\..\\b", "x"]),
              st.sampled_from(["0", "7", "-1", "1.5", "99999999999999999999999", "٣", "²", "", " 3 4"])).map(" ".join),
)


@FUZZ
@given(lines=st.lists(_split_line, max_size=8), raw=st.binary(max_size=60))
def test_fuzz_split_parser(lines, raw, tmp_path_factory):
    from longtail.data.splitfile import MAX_LABEL, read_split

    d = tmp_path_factory.mktemp("fuzz", numbered=True)
    for i, blob in enumerate(["\n".join(lines).encode("utf-8", "surrogatepass"), raw]):
        f = d / f"s{i}.txt"
        try:
            f.write_bytes(blob)
        except UnicodeEncodeError:
            continue
        try:
            paths, labels = read_split(f)
        except LongtailError as e:
            assert "\n" not in str(e) and str(f) in str(e)
            continue
        assert len(paths) == len(labels) == len(set(paths)) and labels.dtype == np.int64
        assert all(0 <= y <= MAX_LABEL for y in labels.tolist())
        assert not any(p.startswith("/") or ".." in p.replace("\\", "/").split("/") for p in paths)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
_yaml_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
_keys = st.sampled_from(["name", "data", "model", "runtime", "stages", "stage_defaults", "extends", "description",
                         "data.imbalance", "data.dataset", "runtime.seed", "runtime.amp", "stages.ce.epochs",
                         "stages.ce.optim.lr", "stages.0.name", "model.head", "stages", "stages.ce", "x.y.z"])


_fragments = st.lists(st.sampled_from([
    "stages: [1, 2]", "stages: {a: 1}", "stages: []", "stages: [{name: a, init: b}]", "stages: [{name: ce}, {name: ce}]",
    "data: [1]", "data: {imbalance: abc}", "data: {imbalance: .inf}", "data: {dataset: 3}", "stage_defaults: 3",
    "stage_defaults: {epochs: x}", "extends: cifar100-lt/ce", "extends: ../../x.yaml", "extends: [a]", "extends: 7",
    "runtime: {seed: 1e400}", "runtime: {amp: no}", "model: {head: cosine, cosine_scale: .nan}", "name: [x]",
    "stages: [{name: a, epochs: -1}]", "stages: [{name: a, batch_size: 6, sampler: class_balanced}]", "? [a]\n: 1",
    "a: &x [*x]", "stages: [{name: a, params: {teacher: z}}]", "%YAML 1.1", "---\n---", "\t", "{", "!!python/object:os.system x",
]), max_size=4).map("\n".join)


@FUZZ
@given(doc=st.one_of(st.text(max_size=120), _fragments, st.dictionaries(_keys, _yaml_value, max_size=4)), sets=st.lists(
    st.tuples(_keys, st.one_of(st.text(max_size=15), _scalar.map(str))).map("=".join) | st.text(max_size=20), max_size=3))
def test_fuzz_config_loader(doc, sets, tmp_path_factory):
    import yaml

    from longtail.config import Recipe, load_recipe

    d = tmp_path_factory.mktemp("cfg", numbered=True)
    f = d / "r.yaml"
    text = doc if isinstance(doc, str) else yaml.safe_dump(_unflatten(doc), allow_unicode=True)
    try:
        f.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        return
    for overrides in ([], sets):
        try:
            recipe = load_recipe(str(f), overrides)
        except LongtailError as e:
            assert "\n" not in str(e).strip() or "YAML" in str(e)
            continue
        assert isinstance(recipe, Recipe) and recipe.stages


@FUZZ
@given(sets=st.lists(st.tuples(_keys, st.text(max_size=15)).map("=".join) | st.text(max_size=25), min_size=1, max_size=4))
def test_fuzz_overrides_on_a_shipped_recipe(sets):
    from longtail.config import load_recipe

    try:
        recipe = load_recipe("cifar100-lt/lws", sets)
    except LongtailError as e:  # one line that points at what was wrong: an override's key, or the override itself
        msg = str(e)
        assert "\n" not in msg.strip(), msg
        keys = [s.split("=", 1)[0].strip().split(".") for s in sets]  # the error may name the first unknown part
        named = [s.strip() for s in sets] + [".".join(k[:i]) for k in keys for i in range(1, len(k) + 1)]
        assert any(t in msg or repr(t)[1:-1] in msg for t in named), (sets, msg)  # repr: control characters
    else:
        assert [s.name for s in recipe.stages] == ["ce", "lws"]  # overrides change values, never the stages


def _unflatten(doc: dict) -> dict:
    out: dict = {}
    for k, v in doc.items():
        node = out
        *head, last = k.split(".")
        for part in head:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[last] = v
    return out


def test_stages_that_are_not_a_list_are_refused():  # found by the override fuzzer: it was a TypeError
    from longtail.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match=r"^stages: expected a list of stages, got 0$"):
        load_recipe("cifar100-lt/ce", ["stages=0"])
