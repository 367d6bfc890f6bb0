"""The import map of lwm/ runs one way (docs/architecture.md): no module imports a layer above its
own, and no two modules import each other, lazy imports inside functions included; test files are
named by the layer they check."""
import ast
import re
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lwm")

# Lowest first; a module may import its own layer and those before it. Prefixes, longest match.
LAYERS = [
    ("base", ("lwm", "lwm.files", "lwm.mesh_spec", "lwm.vocab", "lwm.sharding", "lwm.metrics")),
    ("ops", ("lwm.ops",)),
    ("model", ("lwm.model",)),
    ("vqgan", ("lwm.vqgan",)),
    ("data", ("lwm.data",)),
    ("directories", ("lwm.checkpoint", "lwm.workdir", "lwm.model_dir", "lwm.stage_schema",
                     "lwm.launch", "lwm.bench")),
    ("eval and train", ("lwm.eval", "lwm.train", "lwm.train_hooks")),
    ("demo", ("lwm.demo",)),
]


def modules() -> dict:
  """{module name: file path} of every module under lwm/."""
  found = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        found[rel.removesuffix(".__init__")] = path
  return found


def imports(module: str, path: str, known: dict) -> set:
  """The lwm modules `module` imports (the deepest known module of each imported name)."""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name.startswith("lwm") and name != module:
        out.add(name)
  return out


def layer(module: str) -> int:
  best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
              if module == p or module.startswith(p + ".")), default=None)
  assert best is not None, f"{module} has no layer in LAYERS (tests/test_project_layering.py)"
  return best[1]


def test_every_import_goes_down_or_sideways():
  known = modules()
  upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
            for m, path in sorted(known.items()) for t in sorted(imports(m, path, known))
            if layer(t) > layer(m)]
  assert not upward, "\n".join(upward)


def test_no_module_cycle():
  known = modules()
  graph = {m: imports(m, path, known) for m, path in known.items()}
  reach = {}

  def reachable(start):
    if start not in reach:
      seen, stack = set(), [start]
      while stack:
        for target in graph[stack.pop()]:
          if target not in seen:
            seen.add(target)
            stack.append(target)
      reach[start] = seen
    return reach[start]

  cycles = sorted({" <-> ".join(sorted((m, t))) for m in graph for t in graph[m]
                   if m in reachable(t)})
  assert not cycles, "\n".join(cycles)


def test_test_files_are_named_by_layer():
  # docs/architecture.md, "Tests": tests/test_<layer>_<topic>.py.
  named = re.compile(r"test_(ops|model|vqgan|data|eval|train|bench|project)_\w+\.py")
  tests = os.path.dirname(os.path.abspath(__file__))
  odd = sorted(f for f in os.listdir(tests) if f.startswith("test_") and f.endswith(".py")
               and not named.fullmatch(f))
  assert not odd, odd
