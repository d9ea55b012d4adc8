"""Keeps the house clean (`make test` runs it): every lesson cell that ends in an expression keeps its output, no
module reaches into another's `_private` names, the package's import graph has no cycle, and every module's
docstring says in its first line which idea it holds. Prints one line per problem; exits 1 if there is any."""
import ast, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fastvideo"
# calls that return None: a cell ending in one has nothing to show
QUIET_CALLS = {"close", "rmtree", "unlink", "destroy_distributed", "manual_seed", "seed", "mkdir", "write_text",
               "savefig", "backward", "step", "zero_grad", "clear", "update", "append", "set_epoch", "remove"}


NOISE = ("Warning", "WARNING", "Loading weights", "Loading checkpoint")  # not what a lesson means to show


def _source(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _directives(code: str) -> set:
    return {line[3:].strip().split()[0] for line in code.splitlines() if line.startswith("#| ") and line[3:].strip()}


def _ends_in_expression(code: str) -> bool:
    lines = [l for l in code.splitlines() if not l.lstrip().startswith(("%", "!"))]  # magics are not Python
    try: body = ast.parse("\n".join(lines)).body
    except SyntaxError: return False
    if not body or not isinstance(body[-1], ast.Expr) or code.rstrip().endswith(";"): return False
    value = body[-1].value
    if isinstance(value, ast.Constant): return False  # a bare string: a comment
    if isinstance(value, ast.Call):
        f = value.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name.startswith("test_") or name in QUIET_CALLS: return False
    return True


def notebook_problems(nbs=ROOT / "nbs") -> list:
    problems = []
    for path in sorted(nbs.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts or path.name.startswith("_"): continue
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code": continue
            code = _source(cell)
            flags = _directives(code)
            if flags & {"export", "exporti", "exports", "eval:", "notest", "slow", "gpu", "multigpu"}: continue
            if "tags" in cell.get("metadata", {}) and "parameters" in cell["metadata"]["tags"]: continue
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) if out.get("output_type") == "stream" else ""
                if out.get("name") == "stderr" and any(w in text for w in NOISE):
                    problems.append(f"{path.relative_to(ROOT)} cell {i}: a warning or loading bar in the stored output: "
                                    f"{text.strip().splitlines()[0][:100]}")
            if _ends_in_expression(code) and not cell.get("outputs"):
                first = next((l for l in code.splitlines() if l.strip() and not l.startswith("#|")), "")
                problems.append(f"{path.relative_to(ROOT)} cell {i}: ends in an expression but stores no output "
                                f"(execute the notebook and commit it): {first[:80]}")
    return problems


def _imports(tree, module: str) -> tuple:
    "Package modules `module` imports (anywhere in it), and the private names it takes from them."
    deps, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level: base = ".".join([PACKAGE] + ([base] if base else []))
            if base != PACKAGE and not base.startswith(PACKAGE + "."): continue
            for a in node.names:
                target = f"{base}.{a.name}" if base == PACKAGE else base
                deps.add(target)
                if base == PACKAGE: aliases[a.asname or a.name] = target
                elif a.name.startswith("_"): private.append(f"{a.name} from {base}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE + "."):
                    deps.add(a.name)
                    if a.asname: aliases[a.asname] = a.name
    for node in ast.walk(tree):  # toy._atomic_write: reaching into another module through its name
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{node.attr} of {aliases[node.value.id]}")
    deps.discard(module)
    return deps, private


def package_problems(lib=ROOT / PACKAGE) -> list:
    problems, graph = [], {}
    for path in sorted(lib.glob("*.py")):
        if path.name in ("__init__.py", "_modidx.py"): continue
        module = f"{PACKAGE}.{path.stem}"
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        if not doc or len(doc.splitlines()[0]) < 20:
            problems.append(f"{path.relative_to(ROOT)}: the module's docstring must say, in its first line, which idea it holds")
        deps, private = _imports(tree, module)
        graph[module] = {d for d in deps if (lib / f"{d.split('.')[1]}.py").exists()}
        for p in private: problems.append(f"{path.relative_to(ROOT)}: imports the private name {p}")
    # cycles: depth-first search, reporting each cycle once
    state, stack, seen = {}, [], set()
    def visit(m):
        state[m] = "open"; stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key); problems.append("import cycle: " + " -> ".join(c.split(".")[1] for c in cycle))
            elif d not in state: visit(d)
        stack.pop(); state[m] = "done"
    for m in sorted(graph):
        if m not in state: visit(m)
    return problems


def import_graph(lib=ROOT / PACKAGE) -> dict:
    "module -> the package modules it imports: what the layout lesson draws."
    graph = {}
    for path in sorted(lib.glob("*.py")):
        if path.name in ("__init__.py", "_modidx.py"): continue
        deps, _ = _imports(ast.parse(path.read_text()), f"{PACKAGE}.{path.stem}")
        graph[path.stem] = sorted(d.split(".")[1] for d in deps if (lib / f"{d.split('.')[1]}.py").exists())
    return graph


if __name__ == "__main__":
    found = notebook_problems() + package_problems()
    for line in found: print(line)
    print(f"check_layout: {len(found)} problem(s)")
    sys.exit(1 if found else 0)
