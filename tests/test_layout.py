"""The layout the code promises (docs/architecture.md): data flows one way, no module
reaches into another's private names, functions fit on a screen, and using a trained run
does not load the training loop."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob('md4/**/*.py'), *ROOT.glob('benchmarks/*.py'),
                  *ROOT.glob('tests/*.py'), ROOT / 'prepare_openwebtext_data.py'])
MAX_FUNCTION_LINES = 80  # in the library, configs aside


def _md4_names(tree):
  """Local name -> module for the md4 (and test) modules a file imports."""
  names = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith('md4') or node.module.startswith('test')):
      names.update({a.asname or a.name: node.module for a in node.names})
    elif isinstance(node, ast.Import):
      names.update({a.asname or a.name.split('.')[0]: a.name for a in node.names
                    if a.name.startswith('md4')})
  return names


def test_no_module_uses_another_modules_private_names():
  found = []
  for path in SOURCES:
    tree = ast.parse(path.read_text())
    names = _md4_names(tree)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module in set(names.values()):
        found += [f'{path.name}:{node.lineno} {a.name}' for a in node.names
                  if a.name.startswith('_')]
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in names and node.attr.startswith('_')
          and not node.attr.startswith('__')):
        found.append(f'{path.name}:{node.lineno} {node.value.id}.{node.attr}')
  assert not found, found


def test_library_functions_fit_on_a_screen():
  long = []
  for path in SOURCES:
    if path.parts[-2] == 'tests' or 'configs' in path.parts or path.parent == ROOT:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f'{path.relative_to(ROOT)}:{node.name} {lines} lines')
  assert not long, long


def test_library_imports_form_no_cycle():
  """Module-level imports between md4's modules, as a graph, have no cycle."""
  graph = {}
  for path in ROOT.glob('md4/**/*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    edges = graph.setdefault(module, set())
    for node in ast.parse(path.read_text()).body:  # module level only
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('md4'):
        edges.update(f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in _modules()
                     else node.module for a in node.names)
      elif isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name.startswith('md4'))
  for module in graph:  # a package's __init__ may import its own submodules
    graph[module] = {m for m in graph[module] if m != module
                     and not m.startswith(module + '.')}
  state = {}

  def visit(module, trail):
    if state.get(module) == 'open':
      raise AssertionError('import cycle: ' + ' -> '.join(trail + [module]))
    if state.get(module) is None:
      state[module] = 'open'
      for nxt in graph.get(module, ()):
        visit(nxt, trail + [module])
      state[module] = 'done'

  for module in graph:
    visit(module, [])


def _modules():
  return {'.'.join(p.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')
          for p in ROOT.glob('md4/**/*.py')}


def test_using_a_run_does_not_load_the_training_loop():
  code = ('import sys; import md4.run, md4.inference, md4.judges, md4.evaluation;'
          ' loaded = sorted(m for m in ("md4.train", "md4.preemption", "md4.reporting",'
          ' "md4.preparation") if m in sys.modules); print(loaded)')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == '[]'
