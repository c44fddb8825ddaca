"""Names and subtrees of parameter trees (nested dicts): what optim, sharding and init_from share."""
from __future__ import annotations

from typing import Any


def path_str(path) -> str:
    """A jax key path as "blocks_0/attn/query/kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def subtree(tree: Any, key: tuple[str, ...]) -> Any:
    """tree[key[0]][key[1]]...; the whole tree for key == ()."""
    for k in key:
        tree = tree[k]
    return tree


def replace_subtree(tree: Any, key: tuple[str, ...], value: Any) -> Any:
    """A copy of `tree` with tree[key...] = value (the dicts on the way are copied, the rest shared)."""
    if not key:
        return value
    return dict(tree, **{key[0]: replace_subtree(tree[key[0]], key[1:], value)})
