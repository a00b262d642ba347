"""Imports run one way: the module graph of muse_jax has no cycle, and the data package stands on
nothing above it.

A cycle works only by accident of import order (a function-level import hides it until the day a
refactor moves it to the top), and it means two modules cannot be read, tested or replaced alone.
The data package is the floor the rest stands on: its command lines and readers must run without
the config, model or training layers (and without JAX). So the graph below counts every import,
top-level and inside functions, as an edge.

Edges: `import muse_jax.x.y` and `from muse_jax.x import y` name the module muse_jax.x.y when y is
one (else muse_jax.x: y is an attribute of it); a package means its __init__. Importing a module
also runs the __init__ of every package around it that the importer is not itself inside, so
those count too.
"""

import ast
import os

import pytest

PACKAGE = 'muse_jax'
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)
# What the data package may import besides itself: modules that import nothing of muse_jax, or
# nothing but each other (checked below through what data reaches, not taken on trust).
DATA_MAY_IMPORT = ('muse_jax.errors', 'muse_jax.files', 'muse_jax.console')


def _modules(root: str = ROOT) -> dict:
  """{module name: (path, is package)} of every .py file under the package."""
  out = {}
  base = os.path.dirname(root)
  for parent, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__' and not d.startswith('.'))
    for name in sorted(names):
      if not name.endswith('.py'):
        continue
      path = os.path.join(parent, name)
      parts = os.path.relpath(path, base)[:-3].split(os.sep)
      is_package = parts[-1] == '__init__'
      if is_package:
        parts = parts[:-1]
      out['.'.join(parts)] = (path, is_package)
  return out


def _enclosing(name: str) -> list:
  """'a.b.c' -> ['a', 'a.b']."""
  parts = name.split('.')
  return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def imports_of(source: str, module: str, is_package: bool, known) -> set:
  """The muse_jax modules `source` (the text of `module`) imports anywhere in its body."""
  package = module if is_package else module.rpartition('.')[0]

  def existing(name):  # the longest known module `name` starts with
    while name and name not in known:
      name = name.rpartition('.')[0]
    return name

  named = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      named |= {existing(a.name) for a in node.names if a.name.split('.')[0] == PACKAGE}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from the importer's package, one level up per extra dot
        up = package.split('.')[: len(package.split('.')) - (node.level - 1)]
        base = '.'.join(up + ([base] if base else []))
      if base.split('.')[0] != PACKAGE:
        continue
      for a in node.names:
        sub = f'{base}.{a.name}'
        named.add(sub if sub in known else existing(base))
  out = set()
  for name in named - {'', module}:
    out.add(name)
    # The packages around it run first, except those the importer is inside (already running).
    out |= {p for p in _enclosing(name) if p not in _enclosing(module) and p != module}
  return out


def import_graph(root: str = ROOT) -> dict:
  """{module: set of muse_jax modules it imports}, function-level imports included."""
  modules = _modules(root)
  graph = {}
  for name, (path, is_package) in modules.items():
    with open(path, encoding='utf-8') as f:
      graph[name] = imports_of(f.read(), name, is_package, modules)
  return graph


def tangles(graph: dict) -> list:
  """The strongly connected components of more than one module (Tarjan), each a sorted list:
  every module of one imports every other, directly or not."""
  index, low, stack, on_stack, comps = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        comps.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return sorted(comps)


def find_cycles(graph: dict) -> list:
  """One cycle (a list of modules, first repeated last) per tangle: a shortest way from its first
  module back to it, so a report names every tangle, not just the first."""
  cycles = []
  for comp in tangles(graph):
    comp = set(comp)
    start = min(comp)
    paths, seen, found = [[start]], {start}, None
    while paths and found is None:
      nxt = []
      for p in paths:
        for w in sorted(graph[p[-1]] & comp):
          if w == start:
            found = p + [start]
            break
          if w not in seen:
            seen.add(w)
            nxt.append(p + [w])
        if found:
          break
      paths = nxt
    cycles.append(found)
  return sorted(cycles)


def reachable(graph: dict, start: str) -> set:
  seen, todo = set(), [start]
  while todo:
    for w in graph.get(todo.pop(), ()):
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


@pytest.fixture(scope='module', name='graph')
def _graph():
  return import_graph()


def test_the_parser_sees_every_form_of_import():
  known = {
    'muse_jax',
    'muse_jax.a',
    'muse_jax.b',
    'muse_jax.c',
    'muse_jax.d',
    'muse_jax.p',
    'muse_jax.p.q',
    'muse_jax.p.r',
    'muse_jax.e',
  }
  source = '\n'.join(
    [
      'import os',
      'import muse_jax.a',
      'from muse_jax import b, __version__',
      'from muse_jax.c import thing',
      'def f():',
      '  from muse_jax.p import q  # inside a function: counts',
      'class K:',
      '  import muse_jax.d as d',
      'try:',
      '  from . import e',
      'except ImportError:',
      '  pass',
      'from .p.r import x',
    ]
  )
  got = imports_of(source, 'muse_jax.m', False, known)
  assert got == {
    'muse_jax.a',
    'muse_jax.b',
    'muse_jax',
    'muse_jax.c',
    'muse_jax.p',
    'muse_jax.p.q',
    'muse_jax.d',
    'muse_jax.e',
    'muse_jax.p.r',
  }
  # Inside muse_jax.p, its own package is already running: no edge to it.
  assert imports_of('from muse_jax.p import r', 'muse_jax.p.q', False, known) == {'muse_jax.p.r'}
  assert imports_of('from . import r', 'muse_jax.p', True, known) == {'muse_jax.p.r'}


def test_the_cycle_finder_names_a_cycle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(), 'e': {'e'}}
  assert find_cycles(graph) == [['a', 'b', 'c', 'a']]
  assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_the_graph_is_the_package(graph):
  assert {'muse_jax', 'muse_jax.errors', 'muse_jax.data.layout', 'muse_jax.train'} <= set(graph)
  assert 'muse_jax.steps' in graph['muse_jax.train']  # not vacuous: real edges are seen


def test_no_import_cycle(graph):
  cycles = find_cycles(graph)
  assert not cycles, 'import cycles (function-level imports count):\n' + '\n'.join(
    f'{" -> ".join(c)}   (tangled: {", ".join(t)})' for c, t in zip(cycles, tangles(graph))
  )


def _in_data(name: str) -> bool:
  return name == 'muse_jax.data' or name.startswith('muse_jax.data.')


def _allowed(name: str) -> bool:
  return _in_data(name) or name in DATA_MAY_IMPORT


def test_the_data_package_imports_nothing_above_it(graph):
  direct, reached = {}, set()
  for name in filter(_in_data, graph):
    if not all(map(_allowed, graph[name])):
      direct[name] = sorted(m for m in graph[name] if not _allowed(m))
    reached |= {m for m in reachable(graph, name) if not _allowed(m)}
  assert not direct and not reached, (
    f'the data package imports above it: {direct}; and so depends on {sorted(reached)}'
  )


def test_the_leaves_data_may_import_stand_alone(graph):
  """Checked, not assumed: what data may import must not pull the layers above in after it."""
  assert set(DATA_MAY_IMPORT) <= set(graph)
  assert graph['muse_jax.errors'] == set()  # every module may import it
  assert graph['muse_jax.files'] == set()
  assert graph['muse_jax.console'] <= {'muse_jax.errors'}


def test_models_know_nothing_of_the_config_layer(graph):
  assert 'muse_jax.config_util' not in reachable(graph, 'muse_jax.models')
