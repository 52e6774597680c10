"""The package's import graph, read from the source (imports inside functions count too): no module reaches
itself through others, and the layers point one way (data, models, config and losses never import methods
or the engine; methods never import the engine)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "longtail"


def module_of(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    mods = {module_of(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")
                target = node.module or ""
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([target] if target else []))
                names = [f"{target}.{a.name}" for a in node.names]
                for t in [target, *names]:
                    if t in mods:
                        out.add(t)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in mods}
        out.discard(mod)
        graph[mod] = {t for t in out if not (t == pkg and mod.startswith(pkg + "."))}  # a package's own __init__
    return graph


def test_no_import_cycles():
    graph, cycles = imports(), []
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_lower_layers_do_not_import_higher_ones():
    graph = imports()
    low = ("longtail.data", "longtail.models", "longtail.config", "longtail.losses")
    bad = [(m, t) for m, ts in graph.items() for t in ts
           if (m.startswith(low) and t.startswith(("longtail.methods", "longtail.engine", "longtail.report", "longtail.bench")))
           or (m.startswith("longtail.methods") and t.startswith(("longtail.engine", "longtail.bench")))]
    assert bad == []


def test_no_library_file_is_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
