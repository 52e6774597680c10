"""Reliability: the bad-input matrix.

Each row runs the real command line in-process (``longtail.cli.main``) and must end with exit code 2 and
exactly one ``longtail: error:`` line naming the culprit (file, line or key), no traceback. Every row
snapshots everything its setup wrote (paths, content hashes, mtimes), the run folder it breaks included,
and finds it unchanged after the error: no file written, replaced or touched, and no folder made.
Checkpoints that would run code, divergence, failed writes and kills: ``test_reliability_failures.py``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reliability_kit import (  # noqa: F401  (restore_threads and tiny_run are fixtures)
    TINY, cifar_archive, copy_run, file_dataset, folder_with_bad_image, one_line_error, restore_threads, run_cli,
    run_folders, snapshot, swap_head, swap_model, tiny_run, truncate, write_yaml,
)


# --------------------------------------------------------------------------- the bad-input matrix
# Each row: (id, setup(tmp_path, tiny_run) -> (argv, protected run folder or None), fragments of the one error line).
# Fragments may use {tmp} for tmp_path and {run} for the protected folder. A row whose setup leaves a run folder
# (a copy of a finished run, broken on purpose) must name it as protected: the test checks that it does.


def _train(recipe, out, *more):
    return ["train", recipe, "--out", out, *more]


ROWS = [
    ("data_root_missing", lambda t, r: (_train(r[0], t / "o", "--data-root", t / "missing"), None),
     ["data root {tmp}/missing does not exist"]),
    ("archive_missing", lambda t, r: ((t / "empty").mkdir() or _train("cifar100-lt/ce", t / "o", "--data-root", t / "empty",
                                                                      "--set", "data.download=false"), None),
     ["cifar-100-python.tar.gz not found in {tmp}/empty"]),
    ("archive_corrupt", lambda t, r: (_train("cifar100-lt/ce", t / "o", "--data-root", cifar_archive(t)), None),
     ["{tmp}/corrupt/cifar-100-python.tar.gz", "corrupt or truncated archive"]),
    ("split_image_missing", lambda t, r: (_train(file_dataset(t, bad="missing")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png does not exist"]),
    ("split_image_truncated", lambda t, r: (_train(file_dataset(t, bad="truncated")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png cannot be decoded"]),
    ("split_image_not_an_image", lambda t, r: (_train(file_dataset(t, bad="not_image")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png cannot be decoded", "UnidentifiedImageError"]),
    ("folder_image_truncated", lambda t, r: (folder_with_bad_image(t), None),
     ["image {tmp}/pets/dog/003.png cannot be decoded"]),
    ("split_bad_label", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 1", "c2/0.png two"]), None),
     ["{tmp}/imgs/tr.txt:3: expected '<relative path> <label>', got 'c2/0.png two'"]),
    ("split_label_out_of_range", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 99999999999"]), None),
     ["{tmp}/imgs/tr.txt:2: label 99999999999 is out of range"]),
    ("split_path_dotdot", lambda t, r: (_split_lines(t, ["c0/0.png 0", "../secret.png 1"]), None),
     ["{tmp}/imgs/tr.txt:2: image path '../secret.png' escapes the image root"]),
    ("split_path_absolute", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 1", "/etc/hostname 2"]), None),
     ["{tmp}/imgs/tr.txt:3: image path '/etc/hostname' escapes the image root"]),
    ("empty_class", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c0/1.png 0", "c2/0.png 2"]), None),
     ["{tmp}/imgs/tr.txt: class 1 has no training images"]),
    ("imbalance_below_1", lambda t, r: (_train(r[0], t / "o", "--set", "data.imbalance=0.5"), None),
     ["data.imbalance must be >= 1, got 0.5"]),
    ("imbalance_nan", lambda t, r: (_train(r[0], t / "o", "--set", "data.imbalance=.nan"), None),
     ["data.imbalance must be >= 1, got nan"]),
    ("unknown_recipe", lambda t, r: (_train("cifar100-lt/nope", t / "o"), None),
     ["unknown recipe 'cifar100-lt/nope'"]),
    ("unknown_key_set", lambda t, r: (_train(r[0], t / "o", "--set", "stages.ce.optim.lrr=1"), None),
     ["unknown config key 'stages.ce.optim.lrr'"]),
    ("unknown_key_yaml", lambda t, r: (_train(write_yaml(t, TINY.replace("runtime:", "runtme:")), t / "o"), None),
     ["unknown config key 'runtme'"]),
    ("wrong_type_set", lambda t, r: (_train(r[0], t / "o", "--set", "runtime.seed=abc"), None),
     ["runtime.seed: expected an integer, got 'abc'"]),
    ("bad_choice_set", lambda t, r: (_train(r[0], t / "o", "--set", "data.on_bad_image=ignore"), None),
     ["data.on_bad_image: 'ignore' is not one of error, skip"]),
    ("yaml_syntax", lambda t, r: (_train(write_yaml(t, "name: x\nstages:\n  - {name: ce\n  - {name: lws}\n"), t / "o"), None),
     ["recipe {tmp}/r.yaml:4: invalid YAML"]),
    ("eval_truncated_checkpoint", lambda t, r: _eval_broken(t, r, truncate),
     ["checkpoint {run}/lws/final.pt is unreadable (truncated"]),
    ("eval_other_num_classes", lambda t, r: _eval_broken(t, r, lambda p: swap_head(p, 7)),
     ["checkpoint {run}/lws/final.pt does not fit this model", "size mismatch for heads.main.fc.weight"]),
    ("eval_other_model", lambda t, r: _eval_broken(t, r, swap_model),
     ["checkpoint {run}/lws/final.pt does not fit this model"]),
    ("eval_not_a_checkpoint", lambda t, r: ((t / "notes.pt").write_text("hello") and ["eval", t / "notes.pt"], None),
     ["checkpoint {tmp}/notes.pt is unreadable"]),
    ("resume_truncated_checkpoint", lambda t, r: _resume_broken(t, r, "lws/checkpoint.pt", truncate, drop="lws/final.pt"),
     ["--resume: checkpoint {run}/lws/checkpoint.pt is unreadable (truncated", "delete it to restart stage lws"]),
    ("resume_truncated_final", lambda t, r: _resume_broken(t, r, "ce/final.pt", truncate),
     ["checkpoint {run}/ce/final.pt is unreadable (truncated"]),
    ("resume_checkpoint_other_model", lambda t, r: _resume_broken(t, r, "lws/checkpoint.pt", swap_model, drop="lws/final.pt"),
     ["--resume: checkpoint {run}/lws/checkpoint.pt does not fit stage lws"]),
    ("init_from_other_num_classes", lambda t, r: _resume_broken(t, r, "ce/final.pt", lambda p: swap_head(p, 7), drop="lws"),
     ["stage lws: the weights of stage 'ce' ({run}/ce/final.pt) do not fit this model", "size mismatch"]),
    ("init_from_other_model", lambda t, r: _resume_broken(t, r, "ce/final.pt", swap_model, drop="lws"),
     ["stage lws: the weights of stage 'ce' ({run}/ce/final.pt) do not fit this model"]),
    ("resume_with_other_model", lambda t, r: _resume_broken(t, r, None, None, more=["--set", "model.backbone=resnet32"]),
     ["--resume: 'model' differs from the run in {run}/recipe.yaml"]),
    ("out_exists_without_resume", lambda t, r: (_train(r[0], copy_run(r, t)), t / "run"),
     ["output folder {run} is not empty: pass --resume to continue that run"]),
    ("out_is_a_file", lambda t, r: ((t / "f").write_text("x") and _train(r[0], t / "f"), None),
     ["output folder {tmp}/f is a file"]),
]


def _split_lines(t: Path, lines: list[str]) -> list:
    recipe, imgs = file_dataset(t)
    (imgs / "tr.txt").write_text("\n".join(lines) + "\n")
    return _train(recipe, t / "o", "--data-root", t)


def _eval_broken(t: Path, r, breaker):
    """``longtail eval`` on the final.pt of a copy of the finished run, broken by ``breaker``."""
    run = copy_run(r, t)
    breaker(run / "lws" / "final.pt")
    return ["eval", run / "lws" / "final.pt"], run


def _resume_broken(t: Path, r, target, breaker, drop=None, more=()):
    """A copy of the finished run as a crash could leave it (``drop`` removed), with ``target`` broken; then --resume."""
    run = copy_run(r, t)
    if drop:
        p = run / drop
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if target:
        breaker(run / target)
    return _train(r[0], run, "--resume", *more), run


@pytest.mark.parametrize("setup, fragments", [pytest.param(s, f, id=i) for i, s, f in ROWS])
def test_bad_input_row(setup, fragments, tiny_run, tmp_path, capsys):
    argv, protected = setup(tmp_path, tiny_run)
    # Every run folder the row set up (earlier results and checkpoints) is the one it protects, and holds files.
    assert run_folders(tmp_path) == ([protected] if protected else [])
    if protected is None:  # a row on a new --out still has earlier work to keep: a finished run beside it
        protected = tmp_path.with_name(tmp_path.name + "-earlier-run")  # outside tmp_path: no row's data folder
        shutil.copytree(tiny_run[1], protected)
    run_before = snapshot(protected)
    assert any(name.endswith("final.pt") for name in run_before) and any(v is not None for v in run_before.values())
    before = snapshot(tmp_path)  # the run folder, recipes, images, checkpoints: every path, hash and mtime
    new_out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    new_out = new_out if new_out is not None and not new_out.exists() else None
    rc, out, err = run_cli(capsys, *argv)
    fill = {"tmp": str(tmp_path), "run": str(protected)}
    one_line_error(rc, err, *[f.format(**fill) for f in fragments])
    if protected:
        assert snapshot(protected) == run_before  # the run's files: nothing written, replaced or touched
    after = snapshot(tmp_path)
    if new_out is not None:  # a new --out may hold the start a lazily-read bad image stopped, never a finished stage
        made = {k for k in after if Path(tmp_path, k).is_relative_to(new_out)}
        assert not [k for k in made if k.endswith(("results.json", "final.pt"))], made
        after = {k: v for k, v in after.items() if k not in made}
    assert after == before  # nothing else written, replaced, touched or added (no cache, no temp file)


def test_matrix_covers_every_row_of_the_issue():
    ids = {i for i, _, _ in ROWS}
    assert len(ids) == len(ROWS) >= 30
    # The rows on a finished run's folder: eval on its checkpoints, --resume over it, train into it.
    on_a_run = {i for i, _, f in ROWS if any("{run}" in x for x in f)}
    assert on_a_run == {i for i in ids if i.startswith(("eval_", "resume_", "init_from_", "out_exists"))} - {"eval_not_a_checkpoint"}
    assert len(on_a_run) == 10
