"""scripts/checkpoints.py: finished runs' weights leave the tree and come back byte for byte from the history."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "checkpoints.py"


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True).stdout


def tool(repo, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=repo, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    done = tmp_path / "results" / "full" / "t-if100" / "ce-s0"
    (done / "ce").mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "ce" / "final.pt").write_bytes(b"weights-1" * 100)
    running = tmp_path / "results" / "full" / "t-if100" / "ssd-s1"
    (running / "stage1").mkdir(parents=True)
    (running / "recipe.yaml").write_text("name: ssd\n")
    (running / "stage1" / "checkpoint.pt").write_bytes(b"state")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "runs")
    return tmp_path, done, running


def test_slim_then_restore_round_trips_and_leaves_running_runs_alone(repo):
    root, done, running = repo
    before = (done / "ce" / "final.pt").read_bytes()
    r = tool(root, "slim")
    assert r.returncode == 0, r.stderr
    assert not (done / "ce" / "final.pt").exists() and (running / "stage1" / "checkpoint.pt").exists()
    manifest = json.loads((done / "checkpoints.json").read_text())
    head = git(root, "rev-parse", "HEAD").strip()
    assert manifest["ce/final.pt"] == {"commit": head, "bytes": 900, "sha256": __import__("hashlib").sha256(before).hexdigest()}
    git(root, "commit", "-qm", "slim")
    assert "results/full/t-if100/ce-s0/ce/final.pt" not in git(root, "ls-files")
    r = tool(root, "restore")
    assert r.returncode == 0 and (done / "ce" / "final.pt").read_bytes() == before


def test_restore_refuses_bytes_that_do_not_match_and_slim_refuses_uncommitted_weights(repo):
    root, done, _ = repo
    (done / "ce" / "final.pt").write_bytes(b"edited")
    r = tool(root, "slim")
    assert r.returncode == 2 and "ce/final.pt: not committed as it is on disk" in r.stderr
    git(root, "checkout", "--", ".")
    assert tool(root, "slim").returncode == 0
    m = json.loads((done / "checkpoints.json").read_text())
    m["ce/final.pt"]["sha256"] = "0" * 64
    (done / "checkpoints.json").write_text(json.dumps(m))
    r = tool(root, "restore")
    assert r.returncode == 2 and "do not match" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (done / "ce" / "final.pt").exists()
