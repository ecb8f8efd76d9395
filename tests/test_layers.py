"""Layers import one way: packet layer → data plane → proxy → capture / replay → jobs → api → cli
(DESIGN.md). Every `import` in fastproxy/, TYPE_CHECKING ones included, is checked against the
rank of the module it names, so a cycle such as proxy → api → jobs → capture → proxy cannot return."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastproxy"

# rank of a module by its dotted name (longest prefix wins); a module may import only ranks <= its own
RANKS = {
    "fastproxy": 0,  # errors, constants, config, protocol, the Cython packet layer, record codec
    "fastproxy._dataplane": 1,
    "fastproxy.metrics": 2,
    "fastproxy.proxy": 2,
    "fastproxy.capture.job": 3,
    "fastproxy.traffic_filter": 3,  # filters shared by capture and replay (reads the proxy's session helpers)
    "fastproxy.capture.inspect": 3,  # reads any input (fastproxy.inputs)
    "fastproxy.replay": 3,
    "fastproxy.inputs": 3,  # readers of logs and other tools' captures, for replay
    "fastproxy.report": 3,  # the replay's verdict (results, latency, A/B, HTML)
    "fastproxy.jobs": 4,
    "fastproxy.job_form": 4,  # the fields of job requests (knows the replay's selection fields)
    "fastproxy.api": 5,
    "fastproxy.api_listener": 5,
    "fastproxy.api_security": 5,
    "fastproxy.app": 6,
    "fastproxy.cli": 6,
    "fastproxy.cli_traffic": 6,
    "fastproxy.cli_replay": 6,
    "fastproxy.cli_report": 6,
    "fastproxy.demo": 6,
    "fastproxy.__main__": 6,
}


def rank(module: str) -> int:
    best = ""
    for prefix in RANKS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return RANKS[best]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in out if m.startswith("fastproxy")]


def pyx_imports(text: str) -> str:
    """The Python-level import statements of a Cython module (whole, when in parentheses over
    several lines), as Python source: the rest of the module is not Python."""
    out, lines = [], iter(text.splitlines())
    for line in lines:
        if line.startswith(("import ", "from ")) and " cimport " not in line:
            statement = line
            while "(" in statement and ")" not in statement:
                statement += "\n" + next(lines, ")")
            out.append(statement)
    return "\n".join(out)


def test_no_module_imports_a_higher_layer():
    upward = []
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyx"))
    for path in files:
        if path.suffix == ".pyx":  # Cython: only its Python-level imports matter here
            text = pyx_imports(path.read_text())
        else:
            text = path.read_text()
        me = module_name(path)
        for target in imported(ast.parse(text)):
            if rank(target) > rank(me):
                upward.append(f"{me} (rank {rank(me)}) imports {target} (rank {rank(target)})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import():
    tree = ast.parse("from fastproxy.api import start_api\nimport fastproxy.jobs")
    assert [rank(m) for m in imported(tree)] == [5, 4]
    assert rank("fastproxy.proxy.server") == 2 and rank("fastproxy._packet") == 0


def test_the_check_sees_an_import_over_several_lines_in_cython():
    text = "from fastproxy._packet cimport CommandResult\ncdef int x = 1\nfrom fastproxy.jobs import (\n    JobError,\n    Jobs)\n"
    assert [rank(m) for m in imported(ast.parse(pyx_imports(text)))] == [4, 4]
