"""Every import inside src/kiln runs one way: the module graph has no circle (imports under `if TYPE_CHECKING:`
never run, so they do not count). Function-level imports count: they are how a circle usually hides."""

import ast
from pathlib import Path

import networkx as nx

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(src: Path) -> nx.DiGraph:
    """kiln module -> the kiln modules it imports (a package's __init__ is the package's name)."""
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p for p in (src / "kiln").rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiln"):
                targets = [t for t in (f"{node.module}.{a.name}" for a in node.names) if t in modules] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("kiln")]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and not name.startswith(target + "."):  # a module's own package
                    graph.add_edge(name, target)
    return graph


def test_the_import_graph_has_no_circle():
    graph = import_graph(SRC)
    assert len(graph) > 50 and graph.number_of_edges() > 100  # the walk found the package
    assert [sorted(c) for c in nx.simple_cycles(graph)] == []


def test_a_circle_is_found(tmp_path):
    """The check itself: two modules importing each other, one of them inside a function, is a circle."""
    package = tmp_path / "kiln"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from kiln.b import g\n")
    (package / "b.py").write_text("def g():\n    from kiln import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kiln.a import x\n")
    graph = import_graph(tmp_path)
    assert sorted(map(sorted, nx.simple_cycles(graph))) == [["kiln.a", "kiln.b"]]
    assert not graph.has_edge("kiln.c", "kiln.a")
