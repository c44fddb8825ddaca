"""Device mesh, partition rules and global arrays.

The mesh has three named axes, ``("data", "fsdp", "model")``. The batch is split over
``data`` and ``fsdp`` together; parameters and optimizer state are split over ``fsdp``
(ZeRO-3 style: each array along its largest dimension the axis size divides) and,
where a rule says so, over ``model`` (tensor parallelism). Everything else is
replicated. XLA's sharding propagation does the rest inside the jitted step.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vit_jax.trees import path_str

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Tensor-parallel rules for the transformer blocks: (regex on the "/"-joined
# parameter path, spec). Megatron layout: column-parallel into the heads / MLP
# hidden, row-parallel out of them, so each block needs one all-reduce per half.
DEFAULT_TENSOR_RULES: tuple[tuple[str, tuple], ...] = (
        (r".*(query|key|value|qkv)/kernel$", (None, "model")),
        (r".*(query|key|value|qkv)/bias$", ("model",)),
        (r".*out/kernel$", ("model", None)),
        (r".*fc1/kernel$", (None, "model")),
        (r".*fc1/bias$", ("model",)),
        (r".*fc2/kernel$", ("model", None)),
)


def mesh_shape(data: int = -1, fsdp: int = 1, model: int = 1, devices: int | None = None
               ) -> tuple[int, int, int]:
    """The (data, fsdp, model) sizes of make_mesh over `devices` (default: all); one axis may be -1."""
    n = jax.device_count() if devices is None else int(devices)
    sizes = [data, fsdp, model]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data} fsdp={fsdp} model={model}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
    if -1 in sizes:
        if n % known:
            raise ValueError(f"mesh: {n} devices are not divisible by fsdp*model={known}; "
                             "set --config.mesh.* so their product divides the device count")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh: data*fsdp*model = {int(np.prod(sizes))} but there are {n} devices; "
                         "set one axis to -1 to use the rest")
    return tuple(int(s) for s in sizes)


def batch_shard_count(mesh_config: Any, devices: int | None = None) -> int:
    """Into how many contiguous blocks the global batch is split over the devices (data * fsdp)
    for config.mesh: what an objective needs to keep work within each device's rows."""
    data, fsdp, _ = mesh_shape(**dict(mesh_config), devices=devices)
    return data * fsdp


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, model) mesh over all devices; one axis may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(data, fsdp, model, len(devices))
    # Devices of one process sit next to each other along the batch axes, so a
    # process' local batch is a contiguous block of the global batch.
    arr = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())



def _fsdp_spec(shape: tuple[int, ...], spec: list, fsdp: int, min_size: int) -> list:
    """Adds 'fsdp' on the largest free dimension that it divides."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return spec
    for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if spec[d] is None and shape[d] % fsdp == 0:
            spec[d] = "fsdp"
            return spec
    return spec


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh,
                              tensor_rules: Sequence[tuple[str, tuple]] = DEFAULT_TENSOR_RULES,
                              fsdp_min_size: int = 2 ** 12) -> P:
    """The PartitionSpec of one parameter (or optimizer-state leaf of that shape)."""
    spec: list = [None] * len(shape)
    if mesh.shape["model"] > 1:
        for pattern, rule in tensor_rules:
            if re.fullmatch(pattern, path):
                # Rules are written for 2-D kernels; stacked (scanned) params get a leading None.
                rule = (None,) * (len(shape) - len(rule)) + tuple(rule)
                if len(rule) == len(shape) and all(
                        a is None or shape[i] % mesh.shape[a] == 0 for i, a in enumerate(rule)):
                    spec = list(rule)
                break
    spec = _fsdp_spec(shape, spec, mesh.shape["fsdp"], fsdp_min_size)
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, **kw) -> Any:
    """NamedShardings for every leaf of a pytree of arrays / ShapeDtypeStructs.

    Scalars and int leaves (step counters) are replicated.
    """
    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if not shape:
            return replicated(mesh)
        return NamedSharding(mesh, param_spec(path_str(path), shape, mesh, **kw))
    return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process' local rows into global arrays sharded over the batch axes.

    With P processes, the global batch is the concatenation of the local batches in
    process order (the data pipeline gives process p rows [p*b, (p+1)*b)).
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                    for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Fetches a (possibly multi-host sharded) pytree as numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
