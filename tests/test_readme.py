"""README.md stays a short start page that links the results page, and no relative link in either page is broken."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"
PAGES = [README, RESULTS]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(page: Path) -> list[str]:
    """Every markdown link target of the page, code blocks left out."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out


def test_readme_is_short_and_links_the_results_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 350
    assert "(docs/results.md)" in text and "Results: [docs/results.md](docs/results.md)" in text
    assert RESULTS.is_file()


def test_results_page_holds_the_generated_blocks_and_the_readme_none():
    readme, page = README.read_text(), RESULTS.read_text()
    assert not re.search(r"<!-- /?bench:\w[\w.-]* -->", readme)  # no generated block is left in the README
    for key in ("full-cifar100-lt-if100-s0-cpu", "full-cifar100-lt-if50-s0-cpu", "full-cifar100-lt-if10-s0-cpu",
                "cifar100-lt-cpu", "cifar100-lt-gpu"):
        assert page.count(f"<!-- bench:{key} -->") == 1 and page.count(f"<!-- /bench:{key} -->") == 1
    assert "\n## Beyond the papers\n" in page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_something_in_the_repository(page):
    found = links(page)
    assert found, f"{page.name}: no links found"
    broken = []
    for target in found:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(target)
        elif ROOT not in (dest, *dest.parents):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_cpu_proxy_table_is_what_its_committed_results_file_gives(tmp_path):
    """The results page's `bench reproduce` block re-rendered from results/cifar100-lt-cpu.json (no training)."""
    import shutil

    from longtail.cli import main

    page = tmp_path / "results.md"
    shutil.copy(RESULTS, page)
    shutil.copy(README.parent / "results" / "cifar100-lt-cpu.json", tmp_path)
    assert main(["bench", "reproduce", "--table", "cifar100-lt", "--imbalance", "100", "--seeds", "0,1,2",
                 "--epochs-scale", "0.02", "--render-only", "--results", str(tmp_path), "--page", str(page)]) == 0
    block = re.compile(r"<!-- bench:cifar100-lt-cpu -->.*?<!-- /bench:cifar100-lt-cpu -->", re.S)
    derived, committed = block.search(page.read_text()).group(0), block.search(RESULTS.read_text()).group(0)
    assert "| CE | 7.98 ± 0.50 |" in derived and derived == committed
