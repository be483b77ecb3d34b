"""The device mesh, the logical-axis rules, and where batches and train-state leaves live.

The mesh has axes (data, fsdp, tensor). Without `--sharded` every device is on 'data' and
parameters are replicated (data parallel); with it the mesh takes `config.mesh_shape` and
parameters, optimizer state and activations shard by `config.axis_rules`, which map the
networks' logical axis names ('embed', 'heads', 'mlp', 'vocab', ...) to mesh axes. The
batch always splits over data x fsdp.
"""

import contextlib
import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch dimension splits over both
# Logical axis -> mesh axes without --sharded: only the batch splits.
DATA_PARALLEL_RULES = (('batch', BATCH_AXES),)


def make_mesh(shape=None, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh of `shape` (one entry may be -1); None: all on 'data'."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  shape = (n, 1, 1) if shape is None else tuple(int(s) for s in shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'mesh_shape {shape} should give the sizes of {MESH_AXES}, positive'
                     ' or -1 (the remaining devices) for at most one of them')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape and n % known == 0:
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n:
    raise ValueError(f'mesh_shape {shape} does not use the {n} devices; make the sizes'
                     ' multiply to the device count or set one to -1')
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def setup(config, sharded: bool) -> tuple[Mesh, tuple]:
  """The mesh and the logical-axis rules of a run (see config.mesh_shape/axis_rules)."""
  if not sharded:
    return make_mesh(), DATA_PARALLEL_RULES
  rules = []
  for name, axes in config.axis_rules:
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    unknown = set((axes,) if isinstance(axes, str) else axes or ()) - set(MESH_AXES)
    if unknown:
      raise ValueError(f'config.axis_rules maps {name!r} to unknown mesh axes '
                       f'{sorted(unknown)}; use {MESH_AXES}')
    rules.append((name, axes))
  return make_mesh(config.mesh_shape), tuple(rules)


@contextlib.contextmanager
def active(mesh: Mesh, rules):
  """The mesh and rules that the networks' sharding annotations read while tracing."""
  with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch splits: the mesh's data x fsdp size."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(sharding: NamedSharding, local):
  """This process's rows (an array or a dict of them) -> global arrays in `sharding`."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def fit_to_shape(spec: P, shape, mesh: Mesh) -> P:
  """Drops a mesh axis from a dimension it does not divide (that dimension is replicated)."""
  fitted = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = 1 if axis is None else math.prod(
        mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))
    fitted.append(axis if dim % size == 0 else None)
  return P(*fitted)


def param_shardings(boxed_params, mesh: Mesh, rules):
  """(unboxed abstract parameters, their NamedShardings) from `nn.Partitioned` leaves."""
  params = jax.tree.map(  # unboxed without the sharding constraint nn.unbox would add
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
      boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  logical = nn.get_partition_spec(boxed_params)
  shardings = jax.tree.map(
      lambda spec, p: NamedSharding(
          mesh, fit_to_shape(nn.logical_to_mesh_axes(spec, rules), p.shape, mesh)),
      logical, params, is_leaf=lambda x: isinstance(x, P))
  return params, shardings


def mirror_shardings(tree, params, param_sh, default):
  """Shardings for `tree`: a leaf whose key path ends in a parameter's path and whose shape is
  that parameter's takes its sharding (Adam moments, Muon momentum), anything else `default`.

  Path suffixes rather than optax.tree_map_params, which cannot follow the masked states of
  optimizers that partition the parameters (Muon with AdamW for the rest).
  """
  names = lambda path: tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path)
  by_path = {names(path): (p.shape, sh) for (path, p), sh in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_sh))}
  depth = max(map(len, by_path))

  def pick(path, leaf):
    keys = names(path)
    for n in range(min(depth, len(keys)), 0, -1):
      shape, sh = by_path.get(keys[-n:], (None, None))
      if sh is not None and shape == leaf.shape:
        return sh
    return default

  return jax.tree_util.tree_map_with_path(pick, tree)
