"""An installed longtail (a wheel, ``pip install .``) carries its recipes: built from a snapshot of the
checkout, installed with ``pip install --no-deps --target``, then run from another folder on that copy alone.
Also: the search for user recipes (``--recipes DIR``, ``$LONGTAIL_RECIPES``, ``extends:`` a shipped name),
the error when no recipe is found, ``longtail --version``, and the code hash of an installed copy."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
# a short epoch of the shipped CIFAR recipe on the synthetic set (10 classes, 16 px)
TINY = ["--set", "data.dataset=synthetic", "--set", "data.imbalance=10", "--set", "stages.ce.epochs=1",
        "--set", "stages.ce.batch_size=32", "--set", "runtime.device=cpu", "--set", "runtime.amp=off",
        "--set", "runtime.tensorboard=false"]
USER_RECIPE = """\
extends: cifar100-lt/ce
description: mine, on the shipped CE recipe
data: {dataset: synthetic, imbalance: 10}
runtime: {device: cpu, amp: "off", tensorboard: false}
stages:
  - {name: ce, epochs: 1, batch_size: 32}
"""


def _copy_source(dest: Path) -> Path:
    """What a build reads, copied so the build writes nothing into the checkout (build/, *.egg-info)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "setup.py", "setup.cfg"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "longtail", dest / "longtail", ignore=skip)
    shutil.copytree(REPO / "recipes", dest / "recipes", ignore=skip)
    return dest


def _run(cmd, cwd, **kw):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(site, src, wheel, work)``: the wheel built from a snapshot ``src``, installed into ``site``; ``work``
    is an empty folder to run from."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = _copy_source(tmp / "src")
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("longtail-*.whl")
    _run([*PIP, "install", "--no-deps", "--no-index", "-q", "--target", tmp / "site", wheel], cwd=tmp)
    (tmp / "work").mkdir()
    return tmp / "site", src, wheel, tmp / "work"


def longtail_in(site: Path, cwd: Path, *args, env=None, module="longtail"):
    e = {k: v for k, v in os.environ.items() if k != "LONGTAIL_RECIPES"}
    e.update({"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd)


def python_in(site: Path, cwd: Path, code: str) -> str:
    e = {k: v for k, v in os.environ.items() if k != "LONGTAIL_RECIPES"}
    e.update({"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"})
    return _run([sys.executable, "-c", code], cwd=cwd, env=e).stdout.strip()


def shipped_names(recipes: Path) -> set[str]:
    return {p.relative_to(recipes).with_suffix("").as_posix() for p in recipes.rglob("*.yaml")
            if not any(part.startswith("_") for part in p.relative_to(recipes).parts)}


from test_cli import assert_one_line_error  # noqa: E402  (one checker of the CLI's one-line errors)


# --- the wheel ------------------------------------------------------------------------------------------

def test_wheel_ships_every_module_and_every_recipe(installed):
    site, src, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"longtail/{p.relative_to(src / 'longtail').as_posix()}" for p in (src / "longtail").rglob("*") if p.is_file()}
    recipes = {f"longtail/recipes/{p.relative_to(src / 'recipes').as_posix()}" for p in (src / "recipes").rglob("*.yaml")}
    assert len(recipes) > 50 and "longtail/recipes/cifar100-lt/ce.yaml" in recipes
    assert "longtail/recipes/_base/cifar.yaml" in recipes  # the bases that recipes extend by relative path
    assert not modules - names, f"not in the wheel (a subpackage missing from pyproject's packages?): {sorted(modules - names)}"
    assert not recipes - names, f"recipes not in the wheel: {sorted(recipes - names)}"
    extra = {n for n in names if not n.startswith("longtail-")} - modules - recipes
    assert not extra, f"unexpected files in the wheel: {sorted(extra)}"
    assert not (site / "recipes").exists()  # one tree, inside the package


def test_sdist_then_wheel_carries_the_recipes_too(installed, tmp_path):
    """What ``python -m build`` does: an sdist, and the wheel built from it."""
    _, _, wheel, _ = installed
    src = _copy_source(tmp_path / "src")
    out = tmp_path / "sdist"
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    name = _run([sys.executable, "-c", code], cwd=src).stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tar:
        members = tar.getnames()
    assert any(m.endswith("/recipes/cifar100-lt/ce.yaml") for m in members), members[:20]
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path / "dist", out / name],
         cwd=tmp_path)
    (from_sdist,) = (tmp_path / "dist").glob("longtail-*.whl")
    assert set(zipfile.ZipFile(from_sdist).namelist()) == set(zipfile.ZipFile(wheel).namelist())


# --- the installed copy, run from another folder -------------------------------------------------------

def test_installed_copy_is_imported_and_lists_its_recipes(installed):
    site, src, _, work = installed
    file = python_in(site, work, "import longtail; print(longtail.__file__)")
    assert Path(file).resolve().is_relative_to(site.resolve()), file  # the installed copy, not the checkout
    p = longtail_in(site, work, "recipes")
    assert p.returncode == 0, p.stderr
    listed = p.stdout.split()
    assert "cifar100-lt/ce" in listed and set(listed) == shipped_names(src / "recipes")
    p = longtail_in(site, work, "recipes", "--paths")
    paths = dict(line.split("\t") for line in p.stdout.splitlines())
    assert Path(paths["cifar100-lt/ce"]).resolve() == (site / "longtail" / "recipes" / "cifar100-lt" / "ce.yaml").resolve()
    v = longtail_in(site, work, "--version")
    assert v.returncode == 0 and re.fullmatch(r"longtail \d+\.\d+\.\d+\S*", v.stdout.strip()), v.stdout  # no clone: no commit
    # the installed layout (recipes under longtail/) hashes as the checkout it was built from
    installed_hash = python_in(site, work, "from longtail.engine.runtime import code_hash; print(code_hash())")
    source_hash = python_in(src, work, "from longtail.engine.runtime import code_hash; print(code_hash())")
    assert installed_hash == source_hash and len(installed_hash) == 16


def test_installed_copy_trains_a_shipped_recipe_and_a_user_recipe_extending_it(installed, tmp_path):
    site, src, _, work = installed
    p = longtail_in(site, work, "train", "cifar100-lt/ce", *TINY, "--out", tmp_path / "ce")
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "ce" / "results.json").read_text())
    assert set(res["stages"]) == {"ce"} and 0 <= res["final"]["top1"] <= 100
    assert res["provenance"]["code_hash"] == python_in(src, work, "from longtail.engine.runtime import code_hash; print(code_hash())")

    (work / "mine.yaml").write_text(USER_RECIPE)
    p = longtail_in(site, work, "train", "mine.yaml", "--out", tmp_path / "mine")  # a relative path, from the cwd
    assert p.returncode == 0, p.stderr
    assert "top1" in p.stdout and (tmp_path / "mine" / "results.json").is_file()
    import yaml

    resolved = yaml.safe_load((tmp_path / "mine" / "recipe.yaml").read_text())
    assert resolved["model"]["backbone"] == "resnet32"  # from the shipped base (extends ../_base/cifar.yaml)
    assert resolved["description"].startswith("mine") and resolved["stages"][0]["epochs"] == 1


def test_user_recipe_folders_are_searched_before_the_shipped_ones(installed, tmp_path):
    site, src, _, work = installed
    env_dir, cli_dir = tmp_path / "env", tmp_path / "cli"
    (env_dir / "mine").mkdir(parents=True)
    (env_dir / "mine" / "a.yaml").write_text(USER_RECIPE)
    (env_dir / "cifar100-lt").mkdir()  # shadows the shipped name, and extends it (no cycle: itself is skipped)
    (env_dir / "cifar100-lt" / "ce.yaml").write_text(USER_RECIPE.replace("description: mine", "description: shadow"))
    (env_dir / "_base.yaml").write_text("a: 1\n")  # a base: not listed
    cli_dir.mkdir()
    (cli_dir / "b.yaml").write_text(USER_RECIPE)
    env = {"LONGTAIL_RECIPES": os.pathsep.join([str(env_dir), str(tmp_path / "not-there")])}

    p = longtail_in(site, work, "recipes", "--paths", env=env)
    assert p.returncode == 0, p.stderr
    paths = dict(line.split("\t") for line in p.stdout.splitlines())
    assert Path(paths["mine/a"]) == env_dir / "mine" / "a.yaml"
    assert Path(paths["cifar100-lt/ce"]) == env_dir / "cifar100-lt" / "ce.yaml"
    assert set(paths) == shipped_names(src / "recipes") | {"mine/a"}

    p = longtail_in(site, work, "--recipes", cli_dir, "recipes", env=env)
    assert p.returncode == 0, p.stderr
    assert {"b", "mine/a", "cifar10-lt/ce"} <= set(p.stdout.split())
    assert "LONGTAIL_RECIPES" in longtail_in(site, work, "--help").stdout

    code = ("from longtail.config import load_recipe; r = load_recipe('cifar100-lt/ce'); "
            "print(r.description, r.stages[0].epochs, r.model.backbone)")
    e = {k: v for k, v in os.environ.items() if k != "LONGTAIL_RECIPES"}
    out = _run([sys.executable, "-c", code], cwd=work, env={**e, **env, "PYTHONPATH": str(site)}).stdout.split()
    assert out[:2] == ["shadow,", "on"] and out[-2:] == ["1", "resnet32"], out


def test_no_recipe_found_is_a_one_line_error_that_says_where(installed, tmp_path):
    site, _, _, work = installed
    bare = tmp_path / "site"  # an install whose recipes are gone
    shutil.copytree(site, bare, ignore=lambda d, names: ["recipes"] if Path(d).name == "longtail" else [])
    empty = tmp_path / "empty"
    empty.mkdir()
    p = longtail_in(bare, work, "recipes", env={"LONGTAIL_RECIPES": str(empty)})
    line = assert_one_line_error(p, "no recipes found", str(empty), "$LONGTAIL_RECIPES", str(bare / "longtail" / "recipes"))
    assert "missing" in line and p.stdout == ""
    assert_one_line_error(longtail_in(bare, work, "train", "cifar100-lt/ce"), "unknown recipe 'cifar100-lt/ce'", str(bare))


# --- resolution rules, in this process (the checkout) -------------------------------------------------

@pytest.fixture
def search(monkeypatch):
    from longtail.config import recipes

    monkeypatch.delenv("LONGTAIL_RECIPES", raising=False)
    yield recipes
    recipes.set_recipe_dirs([])


def test_extends_a_file_next_to_it_first_then_a_name(search, tmp_path):
    from longtail.config import ConfigError, load_recipe

    (tmp_path / "cifar100-lt").mkdir()
    # a file of that relative name next to the extending recipe wins over the shipped recipe of that name
    (tmp_path / "cifar100-lt" / "ce.yaml").write_text("extends: ../base.yaml\ndescription: local ce\n")
    (tmp_path / "base.yaml").write_text(USER_RECIPE)
    (tmp_path / "x.yaml").write_text("extends: cifar100-lt/ce\n")
    assert load_recipe(str(tmp_path / "x.yaml")).description == "local ce"
    (tmp_path / "y.yaml").write_text("extends: cifar10-lt/ce\n")  # no such file here: the shipped name
    assert load_recipe(str(tmp_path / "y.yaml")).data.dataset == "cifar10-lt"
    (tmp_path / "z.yaml").write_text("extends: y\n")  # a relative name without .yaml
    assert load_recipe(str(tmp_path / "z.yaml")).data.dataset == "cifar10-lt"
    (tmp_path / "bad.yaml").write_text("extends: nowhere/nothing\n")
    with pytest.raises(ConfigError, match=r"extends: 'nowhere/nothing' is neither .*looked in .*shipped with longtail"):
        load_recipe(str(tmp_path / "bad.yaml"))
    (tmp_path / "outside.yaml").write_text(USER_RECIPE)
    (tmp_path / "inner").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "up.yaml").write_text("extends: ../outside\n")  # not a file there; as a name it
    search.set_recipe_dirs([tmp_path / "inner"])  # would be inner/../outside.yaml: a name never leaves its folder
    with pytest.raises(ConfigError, match="is neither"):
        load_recipe(str(tmp_path / "a" / "b" / "up.yaml"))
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(str(tmp_path / "loop.yaml"))


def test_search_order_cli_then_env_then_shipped(search, tmp_path, monkeypatch):
    from longtail.cli import main
    from longtail.config import load_recipe, resolve_recipe_path

    for d, text in (("cli", "cli"), ("env", "env")):
        (tmp_path / d / "cifar10-lt").mkdir(parents=True)
        (tmp_path / d / "cifar10-lt" / "ce.yaml").write_text(f"extends: cifar10-lt/ce\ndescription: {text}\n")
    assert resolve_recipe_path("cifar10-lt/ce") == search.RECIPES_DIR / "cifar10-lt" / "ce.yaml"
    monkeypatch.setenv("LONGTAIL_RECIPES", str(tmp_path / "env"))
    assert load_recipe("cifar10-lt/ce").description == "env"
    search.set_recipe_dirs([tmp_path / "cli"])
    assert load_recipe("cifar10-lt/ce").description == "cli"  # cli -> env -> shipped, each extending the next
    assert [origin for _, origin in search.recipe_search_path()] == ["--recipes", "$LONGTAIL_RECIPES", "shipped with longtail"]
    assert main(["recipes"]) == 0 and search.recipe_search_path()[0][1] != "--recipes"  # main resets --recipes


def test_code_hash_is_the_same_installed_or_checked_out(tmp_path):
    from longtail.engine.runtime import code_hash

    src, inst = tmp_path / "src", tmp_path / "site"
    for root, recipes in ((src, src / "recipes"), (inst, inst / "longtail" / "recipes")):
        (root / "longtail" / "sub").mkdir(parents=True)
        (root / "longtail" / "a.py").write_text("x = 1\n")
        (root / "longtail" / "sub" / "b.py").write_text("y = 1\n")
        (recipes / "d").mkdir(parents=True)
        (recipes / "d" / "r.yaml").write_text("a: 1\n")
    (inst / "recipes").mkdir()  # some other package's folder beside an installed longtail is not hashed
    (inst / "recipes" / "other.yaml").write_text("b: 2\n")
    assert code_hash(inst) == code_hash(src)
    (inst / "longtail" / "recipes" / "d" / "r.yaml").write_text("a: 2\n")
    assert code_hash(inst) != code_hash(src)


def test_version_names_the_commit_in_a_clone():
    e = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "longtail", "--version"], capture_output=True, text=True, env=e, cwd=REPO)
    assert p.returncode == 0, p.stderr
    from longtail import __version__

    assert p.stdout.startswith(f"longtail {__version__}")
    if (REPO / ".git").exists() and shutil.which("git"):
        assert re.search(r"\(commit [0-9a-f]{40}(-dirty)?\)$", p.stdout.strip()), p.stdout
