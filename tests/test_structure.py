"""
The codebase's shape, as tests: layers a reader can draw (no import cycles, lazy imports
inside functions included) and functions that fit on a screen or two.

    python -m pytest tests/test_structure.py -q
"""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 120


def modules():
    """{module name: its parsed source} for the project's own top-level files."""
    return {os.path.basename(p)[:-3]: ast.parse(open(p).read(), p)
            for p in sorted(glob.glob(os.path.join(ROOT, "*.py")))}


def imports(tree, local):
    """The project modules a file imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & local


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
    mods = modules()
    graph = {m: imports(t, set(mods)) - {m} for m, t in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + \
        " (move what the lower module needs down, or pass it in)"


def test_no_function_is_too_long():
    long = []
    for m, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{m}.py:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_readmes_code_map_is_a_layering():
    """README's code map lists every file, each after every project file it imports."""
    import re
    part = open(os.path.join(ROOT, "README.md")).read().split("## Code map")[1].split("**Reading order")[0]
    order = re.findall(r"^\| `([a-z_]+)\.py` \|", part, re.M)
    mods = modules()
    assert sorted(order) == sorted(mods), "README's code map must list every .py file once"
    for i, m in enumerate(order):
        later = imports(mods[m], set(mods)) - set(order[:i]) - {m}
        assert not later, f"README's code map lists {m}.py before {sorted(later)}, which it imports"
