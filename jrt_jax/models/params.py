"""Parameter counts from the abstract model (`nnx.eval_shape`: nothing is allocated) and a printable table."""

from __future__ import annotations

import collections
import functools

import jax
from flax import nnx

from jrt_jax.models.jrt_config import JRTConfig
from jrt_jax.models.llama_config import LlamaConfig
from jrt_jax.models.registry import build


def abstract_model(config):
    """The model with `jax.ShapeDtypeStruct` leaves instead of arrays (no allocation)."""
    return nnx.eval_shape(lambda: build(config))


def _as_model(model_or_config):
    if isinstance(model_or_config, (JRTConfig, LlamaConfig)):
        return abstract_model(model_or_config)
    if isinstance(model_or_config, nnx.Module):
        return model_or_config
    raise TypeError(f"expected a model or a config; got {type(model_or_config).__name__}")


def param_shapes(model_or_config) -> dict[str, tuple[tuple[int, ...], tuple]]:
    """'path.to.param' → (shape, logical axis names) for every parameter."""
    state = nnx.state(_as_model(model_or_config), nnx.Param)
    out = {}
    for path, var in nnx.to_flat_state(state):
        out[".".join(str(p) for p in path)] = (tuple(var.shape), var.get_metadata().get("out_sharding"))
    return out


def count_params(model_or_config) -> int:
    """Number of parameters (a tied embedding counted once). Configs go through `nnx.eval_shape` (cached)."""
    if isinstance(model_or_config, (JRTConfig, LlamaConfig)):
        return _count_config(model_or_config)
    state = nnx.state(_as_model(model_or_config), nnx.Param)
    return int(sum(x.size for x in jax.tree.leaves(state)))


@functools.lru_cache(maxsize=64)
def _count_config(config) -> int:
    state = nnx.state(abstract_model(config), nnx.Param)
    return int(sum(x.size for x in jax.tree.leaves(state)))


def _group(path: str, model) -> str:
    parts = path.split(".")
    if parts[0] != "layers":
        return parts[0]
    layer = model.layers[int(parts[1])]
    sub = parts[2]
    if sub in ("mixer", "self_attn"):
        return getattr(layer, "kind", "attention")
    return {"norm1": "norms", "norm2": "norms", "input_layernorm": "norms",
            "post_attention_layernorm": "norms"}.get(sub, sub)


def param_table(model_or_config, *, name: str = "") -> str:
    """A table of parameter counts by group (embedding, each mixer kind, MLPs, norms, head) and the total."""
    model = _as_model(model_or_config)
    groups: collections.Counter = collections.Counter()
    for path, (shape, _) in param_shapes(model).items():
        n = 1
        for s in shape:
            n *= s
        groups[_group(path, model)] += n
    total = sum(groups.values())
    title = name or type(model).__name__
    lines = [f"{title}", f"  {'group':<20}{'parameters':>16}{'share':>9}"]
    for g, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {g:<20}{n:>16,}{n / total:>9.1%}")
    lines.append(f"  {'total':<20}{total:>16,}  ({total / 1e6:.2f} M)")
    return "\n".join(lines)
