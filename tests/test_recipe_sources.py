"""Citations: every table, equation, figure or algorithm a recipe (or the code) cites from one of the three
papers exists in that paper, and a cited table reports the recipe's dataset with its backbone, unless the
citation names the dataset the table does report ("SSD Table 5, on ImageNet-LT")."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from longtail.config import RECIPES_DIR, load_recipe

PAPERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "papers"
SOURCE_DIR = Path(__file__).resolve().parents[1] / "longtail"


@dataclass(frozen=True)
class Paper:
    file: str
    aliases: tuple[str, ...]
    tables: dict[int, dict[str, frozenset[str]]]  # table -> dataset -> backbones it reports there
    equations: int
    figures: int
    algorithms: int = 0


def _t(**datasets: str) -> dict[str, frozenset[str]]:
    return {d.replace("_", "-"): frozenset(b.split()) for d, b in datasets.items()}


# Read off the papers in ../shared/papers (beside the repository) (captions and table headers).
PAPERS = {
    "SSD": Paper("000_6be23079381adbb3.txt", ("SSD",), {
        1: _t(imagenet_lt="resnext50_32x4d"),
        2: _t(cifar100_lt="resnet32"),
        3: _t(inat2018="resnet50"),
        4: _t(imagenet_lt="resnext50_32x4d"),  # stage ablation
        5: _t(imagenet_lt="resnext50_32x4d"),  # self-distillation strategies
    }, equations=5, figures=5),
    "CBD": Paper("002_eb210cce554cfef9.txt", ("CBD",), {
        1: _t(imagenet_lt="resnet50"),  # teacher ensembles, validation set
        2: _t(imagenet_lt="resnet50"),
        3: _t(imagenet_lt="resnet50 resnet152", inat2018="resnet50 resnet101", inat2017="resnet50 resnet101"),
        4: _t(inat2018="resnet50"),
        5: _t(imagenet_lt="resnet50", inat2018="resnet50"),  # NCM
        6: _t(imagenet_lt="resnet50 resnet152"),
        7: _t(inat2018="resnet50 resnet101"),
        8: _t(inat2017="resnet50 resnet101"),
    }, equations=4, figures=4),
    "BalanceAux": Paper("003_88b705000244566a.txt", ("BalanceAux", "To Balance or Not to Balance"), {
        1: _t(imagenet_lt="resnet10", places_lt="resnet152"),
        2: _t(imagenet_lt="resnet50", places_lt="resnet50"),
        3: _t(imagenet_lt="resnet10", places_lt="resnet50"),  # ftRRS+CBS
        4: _t(imagenet_lt="resnet10", places_lt="resnet50"),  # CBS:RRS ratios
        5: _t(imagenet_lt="resnet10", places_lt="resnet50"),  # rotation as augmentation
    }, equations=2, figures=4, algorithms=1),
}
# Cited for settings, not in ../shared/papers (beside the repository): their table numbers cannot be checked here.
UNCHECKED = ("Decoupling", "Kang et al.", "Menon et al.", "LDAM", "BBN", "MoCo", "OLTR", "SimCLR")

DATASET_NAMES = {
    "ImageNet-LT": "imagenet-lt", "Places-LT": "places-lt", "CIFAR-100-LT": "cifar100-lt", "CIFAR100-LT": "cifar100-lt",
    "CIFAR-10-LT": "cifar10-lt", "iNaturalist 2018": "inat2018", "iNaturalist18": "inat2018", "iNat18": "inat2018",
    "iNaturalist 2017": "inat2017", "iNaturalist17": "inat2017",
}
KINDS = {"Table": "tables", "Tables": "tables", "Eq.": "equations", "Eqs.": "equations", "Equation": "equations",
         "Equations": "equations", "Fig.": "figures", "Figure": "figures", "Algorithm": "algorithms", "Alg.": "algorithms"}
CITE = re.compile(r"(?<![\w.])(Tables?|Eqs?\.|Equations?|Fig\.|Figure|Algorithm|Alg\.)\s*(\d+(?:\s*(?:[-–/,]|and)\s*\d+)*)")
ALIAS = re.compile("|".join(re.escape(a) for p in PAPERS.values() for a in p.aliases)
                   + "|" + "|".join(re.escape(u) for u in UNCHECKED))
QUALIFIER = re.compile("|".join(re.escape(n) for n in sorted(DATASET_NAMES, key=len, reverse=True)))


def _numbers(text: str) -> list[int]:
    nums = [int(n) for n in re.findall(r"\d+", text)]
    if re.search(r"\d\s*[-–]\s*\d", text) and len(nums) == 2:  # a range: Eqs. 3-5
        return list(range(nums[0], nums[1] + 1))
    return nums


def paper_of(alias: str) -> str | None:
    return next((name for name, p in PAPERS.items() if alias in p.aliases), None)


def check_citations(text: str, dataset: str | None = None, backbone: str | None = None,
                    require_paper: bool = True) -> list[str]:
    """The problems with every citation in ``text``; ``dataset``/``backbone`` are those of the recipe that cites."""
    problems = []
    for line in text.splitlines():
        for m in CITE.finditer(line):
            kind, nums = KINDS[m.group(1)], _numbers(m.group(2))
            before = line[: m.start()].rsplit(";", 1)[-1][-60:]
            aliases = ALIAS.findall(before)
            if not aliases:
                if require_paper:
                    problems.append(f"{m.group(0)!r} names no paper: {line.strip()!r}")
                continue
            name = paper_of(aliases[-1])
            if name is None:  # a paper outside ../shared/papers (beside the repository)
                continue
            paper = PAPERS[name]
            valid = set(paper.tables) if kind == "tables" else set(range(1, getattr(paper, kind) + 1))
            for n in nums:
                if n not in valid:
                    problems.append(f"{name} has no {m.group(1)} {n} (it has {sorted(valid)}): {line.strip()!r}")
                    continue
                if kind != "tables" or dataset is None:
                    continue
                after = line[m.end():].split(";", 1)[0][:30]
                qualifier = QUALIFIER.search(after)
                covered = paper.tables[n]
                if qualifier:
                    if DATASET_NAMES[qualifier.group(0)] not in covered:
                        problems.append(f"{name} Table {n} does not report {qualifier.group(0)} "
                                        f"(it reports {sorted(covered)}): {line.strip()!r}")
                elif dataset not in covered:
                    problems.append(f"{name} Table {n} reports {sorted(covered)}, not this recipe's {dataset}; "
                                    f"name the table's dataset if it is cited for another one: {line.strip()!r}")
                elif backbone not in covered[dataset]:
                    problems.append(f"{name} Table {n} reports {dataset} with {sorted(covered[dataset])}, "
                                    f"not this recipe's {backbone}: {line.strip()!r}")
    return problems


RECIPE_FILES = sorted(RECIPES_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_recipe_citations_exist_and_fit_its_dataset(path):
    recipe = load_recipe(str(path))
    text = "\n".join([path.read_text(), recipe.reference, recipe.description])  # the resolved ones may be inherited
    assert check_citations(text, recipe.data.dataset, recipe.model.backbone) == []


@pytest.mark.parametrize("path", sorted(SOURCE_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(SOURCE_DIR)))
def test_code_citations_exist(path):
    assert check_citations(path.read_text(), require_paper=False) == []


@pytest.mark.parametrize("text, dataset, backbone, problem", [
    ("To Balance or Not to Balance, Table 2: 39.6", "places-lt", "resnet152", "not this recipe's resnet152"),
    ("SSD (ICCV 2021) Table 1, CE row", "cifar100-lt", "resnet32", "not this recipe's cifar100-lt"),
    ("SSD (ICCV 2021) Table 2: 53.8", "imagenet-lt", "resnext50_32x4d", "not this recipe's imagenet-lt"),
    ("SSD ablation (SSD Table 5, on CIFAR-100-LT)", "cifar100-lt", "resnet32", "does not report CIFAR-100-LT"),
    ("L = ... (CBD Eq. 5)", None, None, "CBD has no Eq. 5"),
    ("SSD Eqs. 3-6", None, None, "SSD has no Eqs. 6"),
    ("CBD (BMVC 2021) Table 9", "imagenet-lt", "resnet50", "CBD has no Table 9"),
    ("published in Table 3", "inat2018", "resnet50", "names no paper"),
])
def test_the_checker_catches_wrong_citations(text, dataset, backbone, problem):
    problems = check_citations(text, dataset, backbone)
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_checker_accepts_right_ones():
    assert check_citations("To Balance or Not to Balance, Table 1: 39.6", "places-lt", "resnet152") == []
    assert check_citations("SSD Table 2 (CIFAR-100-LT): 46.0", "cifar10-lt", "resnet32") == []
    assert check_citations("CBD Eqs. 2-4; Decoupling (ICLR 2020) Table 7", "cifar100-lt", "resnet32") == []
    assert check_citations("Decoupling (ICLR 2020) re-balancers; SSD Table 2 LWS row", "cifar100-lt", "resnet32") == []


@pytest.mark.parametrize("name", PAPERS)
def test_the_table_of_papers_matches_their_text(name):
    """The numbers above are those of the captions and equation tags in the papers' text."""
    paper = PAPERS[name]
    path = PAPERS_DIR / paper.file
    if not path.is_file():
        pytest.skip(f"{path} not found")
    text = path.read_text()
    found = lambda rx: sorted({int(n) for n in re.findall(rx, text, re.M)})  # noqa: E731
    assert found(r"^Table (\d+)[.:]") == sorted(paper.tables)
    eqs = sorted({int(a or b or c) for a, b, c in re.findall(r"\\q?quad \((\d+)\)|\\tag\{(\d+)\}|^\((\d+)\)\s*$", text, re.M)})
    assert eqs == list(range(1, paper.equations + 1))
    assert found(r"^(?:Fig\.|Figure) (\d+)[.:]") == list(range(1, paper.figures + 1))
    assert found(r"^Algorithm (\d+)") == list(range(1, paper.algorithms + 1))


def test_citation_fixes_leave_recorded_runs_current():
    """A run is matched to its recipe by hash; the prose (description, reference) is not part of it."""
    a = load_recipe("cifar100-lt/ssd")
    b = load_recipe("cifar100-lt/ssd", ["reference=SSD Table 2 (CIFAR-100-LT)", "description=x"])
    assert a.hash() == b.hash()
    assert a.hash() != load_recipe("cifar100-lt/ssd", ["stages.stage1.epochs=3"]).hash()
