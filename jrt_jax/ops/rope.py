"""Rotary position embeddings (RoPE) and the context-extension frequency maps built on them.

RoPE (Su et al., 2021) rotates each pair of channels ``(x_i, x_{i + d/2})`` of a query or key at position
``m`` by the angle ``m * inv_freq[i]`` with ``inv_freq[i] = base ** (-2i / d)``, so that the dot product of a
rotated query at ``m`` and a rotated key at ``n`` depends on the positions only through ``m - n``.

A model trained with context length ``L`` can be stretched to ``L' = s * L`` by changing the frequency map:

* ``"linear"`` -- **Position Interpolation (PI)**, Chen et al. 2023, arXiv 2306.15595. Positions are squeezed
  back into the trained range, ``m -> m / s``; since the angle is ``m * inv_freq`` this is the same as
  ``inv_freq / s``. A short fine-tune at the longer length then recovers quality.
* ``"dynamic"`` -- dynamic NTK-aware scaling: once the sequence is longer than the trained length the base
  grows, ``base' = base * (s * T / L - (s - 1)) ** (d / (d - 2))`` for current length ``T``.
* ``"yarn"`` -- YaRN (Peng et al. 2023, arXiv 2309.00071): interpolate the low frequencies, keep the high ones,
  blend linearly in between, and scale the logits through ``attention_scale``.
* ``"llama3"`` -- the Llama 3.1 map: divide long wavelengths by ``s``, keep short ones, smooth in between.
* ``"longrope"`` -- LongRoPE (Ding et al. 2024, arXiv 2402.13753): per-frequency rescale factors, one set for
  short and one for long contexts, plus an attention scale.

The ``scaling`` dictionaries use the keys, defaults and numbers of Hugging Face ``transformers``
(``rope_scaling`` / ``rope_parameters`` in a model's ``config.json``), so a converted checkpoint's config can be
passed straight through. Layout is rotate-half, exactly as Hugging Face Llama: channel ``i`` pairs with channel
``i + d/2`` (not the interleaved ``(2i, 2i + 1)`` layout of the original paper / Meta checkpoints).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jrt_jax.ops._checks import check_positive_float, check_positive_int

__all__ = ["ROPE_TYPES", "rope_frequencies", "apply_rope"]

#: The ``rope_type`` values :func:`rope_frequencies` understands (``scaling=None`` means ``"default"``).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")

_DEFAULT_BASE = 10000.0
_DEFAULT_PARTIAL_ROTARY_FACTOR = 1.0


# ----------------------------------------------------------------------------------------------------------------
# Argument checking
# ----------------------------------------------------------------------------------------------------------------


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _factor(name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 1.0:
        raise ValueError(f"{name} must be a finite number >= 1 (the context-extension ratio), got {value!r}")
    return float(value)


def _merge_argument(scaling: Mapping, key: str, argument: Any, default: Any) -> Any:
    """Value of a setting that may come either as a function argument or inside the ``scaling`` dict.

    The dict wins over the argument's default; an argument set to something else that disagrees with the dict is
    an error rather than a silent choice.
    """
    if key not in scaling or scaling[key] is None:
        return argument
    inner = scaling[key]
    if argument is not None and argument != default and argument != inner:
        raise ValueError(
            f"{key} given twice with different values: {argument!r} as an argument and {inner!r} in scaling[{key!r}]"
        )
    return inner


def _resolve_rope_type(scaling: Mapping) -> str:
    rope_type = scaling.get("rope_type")
    if rope_type is None:
        rope_type = scaling.get("type")  # legacy key of older configs
    if rope_type is None:
        rope_type = "default"
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise ValueError(f"scaling['rope_type'] must be one of {ROPE_TYPES}, got {rope_type!r}")
    return rope_type


def _required(scaling: Mapping, key: str, rope_type: str) -> Any:
    if scaling.get(key) is None:
        raise ValueError(f"scaling[{key!r}] is required for rope_type {rope_type!r} but is missing")
    return scaling[key]


def _original_context(scaling: Mapping, rope_type: str, max_position_embeddings: int | None) -> int:
    """``original_max_position_embeddings``; like transformers, falls back to ``max_position_embeddings``."""
    value = scaling.get("original_max_position_embeddings")
    if value is None:
        if max_position_embeddings is None:
            raise ValueError(
                f"scaling['original_max_position_embeddings'] is required for rope_type {rope_type!r} but is missing "
                "(it may also be left out when max_position_embeddings is given, which then stands in for it)"
            )
        return max_position_embeddings
    return check_positive_int("scaling['original_max_position_embeddings']", value)


def _factor_or_ratio(
    scaling: Mapping, rope_type: str, max_position_embeddings: int | None, original: int
) -> float:
    """``factor``, or when absent ``max_position_embeddings / original_max_position_embeddings`` (transformers)."""
    if scaling.get("factor") is not None:
        return _factor("scaling['factor']", scaling["factor"])
    if max_position_embeddings is None:
        raise ValueError(
            f"scaling['factor'] is required for rope_type {rope_type!r} but is missing "
            "(it may also be left out when max_position_embeddings is given: factor is then "
            "max_position_embeddings / original_max_position_embeddings)"
        )
    return _factor(
        f"factor (derived as max_position_embeddings / original_max_position_embeddings = "
        f"{max_position_embeddings} / {original})",
        max_position_embeddings / original,
    )


def _factor_list(scaling: Mapping, key: str, length: int) -> np.ndarray:
    value = _required(scaling, key, "longrope")
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"scaling[{key!r}] must be a list of {length} positive numbers, got {value!r}")
    if len(value) != length:
        raise ValueError(
            f"scaling[{key!r}] must have length rot_dim // 2 = {length} (one factor per frequency), got {len(value)}"
        )
    items = [v.item() if isinstance(v, np.generic) else v for v in value]
    for item in items:
        if not _is_real(item) or not math.isfinite(float(item)) or float(item) <= 0:
            raise ValueError(f"scaling[{key!r}] must contain only finite numbers > 0, got {item!r}")
    return np.asarray(items, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Frequency maps (float64 numpy; cast to float32 at the end)
# ----------------------------------------------------------------------------------------------------------------


def _exponents(rot_dim: int) -> np.ndarray:
    """``2i / rot_dim`` for ``i = 0 .. rot_dim/2 - 1``, rounded to float32 and returned as float64.

    Meta's Llama code and transformers form this ratio in float32; its rounding error, multiplied by
    ``ln(base)``, reaches ~1e-6 relative in ``base ** -exponent`` for large bases. Rounding the exponent the same
    way keeps parity with the trained checkpoints; everything after it is float64.
    """
    return (np.arange(0, rot_dim, 2, dtype=np.float32) / np.float32(rot_dim)).astype(np.float64)


def _plain(base: float, rot_dim: int) -> np.ndarray:
    return base ** -_exponents(rot_dim)


def _dynamic(base, rot_dim, scaling, seq_len, max_position_embeddings):
    factor = _factor("scaling['factor']", _required(scaling, "factor", "dynamic"))
    if max_position_embeddings is None:
        raise ValueError(
            "rope_type 'dynamic' needs max_position_embeddings (the trained context length), either as the "
            "max_position_embeddings argument or as scaling['max_position_embeddings']"
        )
    if rot_dim <= 2:
        raise ValueError(f"rope_type 'dynamic' needs a rotary dimension > 2, got rot_dim = {rot_dim}")
    # Below the trained length the map is plain RoPE; above it the base grows with the length.
    length = max(seq_len if seq_len is not None else max_position_embeddings, max_position_embeddings)
    growth = factor * length / max_position_embeddings - (factor - 1.0)
    return _plain(base * growth ** (rot_dim / (rot_dim - 2)), rot_dim), 1.0


def _yarn(base, rot_dim, scaling, max_position_embeddings):
    original = _original_context(scaling, "yarn", max_position_embeddings)
    factor = _factor_or_ratio(scaling, "yarn", max_position_embeddings, original)

    beta_fast = scaling.get("beta_fast")
    beta_slow = scaling.get("beta_slow")
    beta_fast = 32.0 if beta_fast is None else check_positive_float("scaling['beta_fast']", beta_fast)
    beta_slow = 1.0 if beta_slow is None else check_positive_float("scaling['beta_slow']", beta_slow)
    if beta_fast < beta_slow:
        raise ValueError(
            f"scaling['beta_fast'] must be >= scaling['beta_slow'], got beta_fast={beta_fast} and beta_slow={beta_slow}"
        )
    truncate = scaling.get("truncate", True)
    if truncate is not None and not isinstance(truncate, (bool, np.bool_)):
        raise ValueError(f"scaling['truncate'] must be a bool, got {truncate!r}")

    # Attention (logit) scale: sqrt(1/t) = 0.1 ln(s) + 1 in the paper; DeepSeek's mscale variant is a ratio.
    def mscale_of(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is not None:
        attention_scale = check_positive_float("scaling['attention_factor']", attention_factor)
    else:
        mscale = scaling.get("mscale")
        mscale_all_dim = scaling.get("mscale_all_dim")
        for key, value in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
            if value is not None and (not _is_real(value) or not math.isfinite(value) or value < 0):
                raise ValueError(f"scaling[{key!r}] must be a finite number >= 0, got {value!r}")
        if mscale and mscale_all_dim:  # both given and non-zero, as transformers tests it
            attention_scale = mscale_of(factor, float(mscale)) / mscale_of(factor, float(mscale_all_dim))
        else:
            attention_scale = mscale_of(factor)

    # Frequency index (fractional) at which a wavelength fits `rotations` times into the original context.
    def index_for(rotations: float) -> float:
        return rot_dim * math.log(original / (rotations * 2.0 * math.pi)) / (2.0 * math.log(base))

    low, high = index_for(beta_fast), index_for(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    if low == high:
        high += 0.001
    # ramp = 0: keep the original frequency (fast, short wavelengths); ramp = 1: interpolate by `factor`.
    ramp = np.clip((np.arange(rot_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    plain = _plain(base, rot_dim)
    return plain / factor * ramp + plain * (1.0 - ramp), float(attention_scale)


def _llama3(base, rot_dim, scaling, max_position_embeddings):
    factor = _factor("scaling['factor']", _required(scaling, "factor", "llama3"))
    low_ff = check_positive_float("scaling['low_freq_factor']", _required(scaling, "low_freq_factor", "llama3"))
    high_ff = check_positive_float("scaling['high_freq_factor']", _required(scaling, "high_freq_factor", "llama3"))
    if high_ff <= low_ff:
        raise ValueError(
            f"scaling['high_freq_factor'] must be > scaling['low_freq_factor'], got {high_ff} and {low_ff}"
        )
    original = _original_context(scaling, "llama3", max_position_embeddings)

    plain = _plain(base, rot_dim)
    wavelength = 2.0 * math.pi / plain
    long_wave = original / low_ff  # wavelengths above this are divided by `factor`
    short_wave = original / high_ff  # wavelengths below this are kept
    # In between, blend with weight `smooth` (0 at `long_wave`, 1 at `short_wave`) on the unscaled frequency.
    smooth = (original / wavelength - low_ff) / (high_ff - low_ff)
    blended = (1.0 - smooth) * plain / factor + smooth * plain
    inv_freq = np.where(wavelength > long_wave, plain / factor, np.where(wavelength < short_wave, plain, blended))
    return inv_freq, 1.0


def _longrope(base, rot_dim, scaling, seq_len, max_position_embeddings):
    short = _factor_list(scaling, "short_factor", rot_dim // 2)
    long = _factor_list(scaling, "long_factor", rot_dim // 2)
    original = _original_context(scaling, "longrope", max_position_embeddings)
    factor = _factor_or_ratio(scaling, "longrope", max_position_embeddings, original)

    attention_factor = scaling.get("attention_factor")
    if attention_factor is not None:
        attention_scale = check_positive_float("scaling['attention_factor']", attention_factor)
    elif factor <= 1.0:
        attention_scale = 1.0
    else:
        attention_scale = math.sqrt(1.0 + math.log(factor) / math.log(original))

    rescale = long if seq_len is not None and seq_len > original else short
    return _plain(base, rot_dim) / rescale, float(attention_scale)


def rope_frequencies(
    head_dim: int,
    *,
    base: float = _DEFAULT_BASE,
    scaling: Mapping[str, Any] | None = None,
    seq_len: int | None = None,
    max_position_embeddings: int | None = None,
    partial_rotary_factor: float = _DEFAULT_PARTIAL_ROTARY_FACTOR,
) -> tuple[jnp.ndarray, float]:
    """Inverse frequencies and attention scale of (possibly context-extended) RoPE.

    Same numbers as ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=seq_len)``
    (to float32 rounding): the exponent ``2i / rot_dim`` is rounded to float32 as transformers and Meta's Llama
    code do, the maps are evaluated in float64, and the result is rounded once to float32.

    Args:
      head_dim: size of one attention head; positive and even.
      base: RoPE base ``theta`` (``rope_theta`` in Hugging Face configs). If ``scaling`` holds ``"rope_theta"``,
        that value is used (passing a different non-default ``base`` as well is an error).
      scaling: ``None`` for plain RoPE, or a Hugging Face ``rope_scaling`` / ``rope_parameters`` dict with
        ``"rope_type"`` (or the legacy key ``"type"``) one of :data:`ROPE_TYPES` and the type's keys:

        * ``"default"``: none.
        * ``"linear"`` (Position Interpolation, arXiv 2306.15595): ``factor`` = s; ``inv_freq / s``, i.e.
          position ``m`` is treated as ``m / s``.
        * ``"dynamic"`` (dynamic NTK): ``factor``; needs ``max_position_embeddings``. For
          ``T = max(seq_len, max_position_embeddings)`` the base becomes
          ``base * (factor * T / max_position_embeddings - factor + 1) ** (rot_dim / (rot_dim - 2))``.
        * ``"yarn"``: ``factor``, ``original_max_position_embeddings``; optional ``beta_fast`` (32),
          ``beta_slow`` (1), ``mscale``, ``mscale_all_dim``, ``attention_factor``, ``truncate`` (True; an
          explicit ``None`` counts as False, as in transformers).
          ``attention_scale`` defaults to ``0.1 ln(factor) + 1``, or with both ``mscale`` and
          ``mscale_all_dim`` non-zero, ``(0.1 mscale ln f + 1) / (0.1 mscale_all_dim ln f + 1)``.
        * ``"llama3"``: ``factor``, ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``.
        * ``"longrope"``: ``short_factor`` and ``long_factor`` (lists of ``rot_dim // 2`` numbers),
          ``original_max_position_embeddings``; optional ``factor`` and ``attention_factor``. The long factors
          are used when ``seq_len > original_max_position_embeddings``, the short ones otherwise (also when
          ``seq_len`` is ``None``). ``attention_scale`` defaults to
          ``sqrt(1 + ln(factor) / ln(original_max_position_embeddings))`` (1 when ``factor <= 1``).

        As in transformers, ``original_max_position_embeddings`` may be left out when ``max_position_embeddings``
        is given (it then stands in for it), and for ``"yarn"``/``"longrope"`` a missing ``factor`` becomes
        ``max_position_embeddings / original_max_position_embeddings``. ``"rope_theta"``,
        ``"partial_rotary_factor"`` and ``"max_position_embeddings"`` inside the dict are honoured; any other
        unknown keys are ignored.
      seq_len: current sequence length (largest position + 1). Only ``"dynamic"`` and ``"longrope"`` depend on
        it; ``None`` means ``max_position_embeddings`` for ``"dynamic"`` and "short" for ``"longrope"``.
      max_position_embeddings: the model's context length (``config.max_position_embeddings``). Needed by
        ``"dynamic"``; a fallback for the missing keys described above.
      partial_rotary_factor: fraction of ``head_dim`` that is rotated; ``rot_dim = int(head_dim * factor)``
        must be even and positive.

    Returns:
      ``(inv_freq, attention_scale)``: ``inv_freq`` a float32 array of shape ``[rot_dim // 2]``, and a Python
      float by which cos and sin are multiplied (pass both to :func:`apply_rope`).

    Raises:
      ValueError: naming the offending argument or ``scaling`` key, for an unknown ``rope_type``, a missing key,
        ``factor < 1``, non-positive lengths/bases/factors, a ``short_factor``/``long_factor`` of the wrong
        length, an odd or non-positive ``head_dim``, or a ``scaling`` that is not a dict.
    """
    inv_freq, attention_scale = rope_frequencies_numpy(
        head_dim, base=base, scaling=scaling, seq_len=seq_len, max_position_embeddings=max_position_embeddings,
        partial_rotary_factor=partial_rotary_factor)
    return jnp.asarray(inv_freq), attention_scale


def rope_frequencies_numpy(
    head_dim: int,
    *,
    base: float = _DEFAULT_BASE,
    scaling: Mapping[str, Any] | None = None,
    seq_len: int | None = None,
    max_position_embeddings: int | None = None,
    partial_rotary_factor: float = _DEFAULT_PARTIAL_ROTARY_FACTOR,
) -> tuple[np.ndarray, float]:
    """`rope_frequencies` on the host: (float32 numpy inv_freq, attention scale); no JAX backend is touched."""
    head_dim = check_positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs of channels), got {head_dim}")
    if scaling is None:
        scaling = {}
    if not isinstance(scaling, Mapping):
        raise ValueError(
            "scaling must be None or a dict like {'rope_type': 'linear', 'factor': 2.0}, "
            f"got {type(scaling).__name__}"
        )
    rope_type = _resolve_rope_type(scaling)

    base = check_positive_float("base (rope_theta)", _merge_argument(scaling, "rope_theta", base, _DEFAULT_BASE))
    partial_rotary_factor = _merge_argument(
        scaling, "partial_rotary_factor", partial_rotary_factor, _DEFAULT_PARTIAL_ROTARY_FACTOR
    )
    if not _is_real(partial_rotary_factor) or not 0.0 < float(partial_rotary_factor) <= 1.0:
        raise ValueError(f"partial_rotary_factor must be a number in (0, 1], got {partial_rotary_factor!r}")
    rot_dim = int(head_dim * partial_rotary_factor)
    if rot_dim < 2 or rot_dim % 2:
        raise ValueError(
            f"int(head_dim * partial_rotary_factor) = int({head_dim} * {partial_rotary_factor}) = {rot_dim} "
            "must be even and >= 2 (the rotated part of the head is made of channel pairs)"
        )

    max_position_embeddings = _merge_argument(scaling, "max_position_embeddings", max_position_embeddings, None)
    if max_position_embeddings is not None:
        max_position_embeddings = check_positive_int("max_position_embeddings", max_position_embeddings)
    if seq_len is not None:
        seq_len = check_positive_int("seq_len", seq_len)

    if rope_type == "default":
        inv_freq, attention_scale = _plain(base, rot_dim), 1.0
    elif rope_type == "linear":
        factor = _factor("scaling['factor']", _required(scaling, "factor", "linear"))
        inv_freq, attention_scale = _plain(base, rot_dim) / factor, 1.0
    elif rope_type == "dynamic":
        inv_freq, attention_scale = _dynamic(base, rot_dim, scaling, seq_len, max_position_embeddings)
    elif rope_type == "yarn":
        inv_freq, attention_scale = _yarn(base, rot_dim, scaling, max_position_embeddings)
    elif rope_type == "llama3":
        inv_freq, attention_scale = _llama3(base, rot_dim, scaling, max_position_embeddings)
    else:  # longrope
        inv_freq, attention_scale = _longrope(base, rot_dim, scaling, seq_len, max_position_embeddings)
    return inv_freq.astype(np.float32), float(attention_scale)


# ----------------------------------------------------------------------------------------------------------------
# Applying the rotation
# ----------------------------------------------------------------------------------------------------------------


def apply_rope(x, positions, inv_freq, attention_scale=1.0):
    """Rotate queries or keys by their positions (rotate-half layout, as Hugging Face Llama).

    With ``n = len(inv_freq)``, angles ``a = positions[..., None] * inv_freq`` and
    ``cos = attention_scale * cos(a)``, ``sin = attention_scale * sin(a)`` (both ``[batch, seq, n]``, shared by
    all heads), channel ``i < n`` and channel ``n + i`` form a pair::

        out[..., i]     = x[..., i] * cos[..., i] - x[..., n + i] * sin[..., i]
        out[..., n + i] = x[..., n + i] * cos[..., i] + x[..., i] * sin[..., i]

    which is Hugging Face's ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``. If ``2 n < head_dim``
    (partial rotary), channels ``2 n ..`` pass through unchanged.

    Position Interpolation (arXiv 2306.15595) can be expressed either through ``inv_freq`` (``"linear"``
    scaling in :func:`rope_frequencies`) or here, with float ``positions / s`` and plain frequencies.

    Args:
      x: ``[batch, seq, heads, head_dim]`` floating array (any float dtype).
      positions: ``[batch, seq]`` or ``[seq]`` (shared across the batch); integer or float. A leading batch
        dimension of 1 broadcasts.
      inv_freq: ``[n]`` with ``1 <= n <= head_dim // 2``, e.g. from :func:`rope_frequencies`.
      attention_scale: multiplies cos and sin (the YaRN / LongRoPE attention scale); scalar.

    Returns:
      The rotated array, same shape and dtype as ``x``. The rotation is computed in float32 (or in ``x.dtype``
      when that is wider) whatever the input dtype.

    Raises:
      ValueError: wrong rank or mismatched shape of ``x``, ``positions`` or ``inv_freq`` (named in the message).
      TypeError: ``x`` not floating point, or ``positions`` not integer/float.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 [batch, seq, heads, head_dim], got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    batch, seq, _, head_dim = x.shape

    positions = jnp.asarray(positions)
    if positions.dtype == jnp.bool_ or not (
        jnp.issubdtype(positions.dtype, jnp.integer) or jnp.issubdtype(positions.dtype, jnp.floating)
    ):
        raise TypeError(f"positions must be integer or floating point, got {positions.dtype}")
    if positions.ndim == 1:
        positions = positions[None, :]
    elif positions.ndim != 2:
        raise ValueError(f"positions must have rank 1 [seq] or 2 [batch, seq], got shape {positions.shape}")
    if positions.shape[1] != seq or positions.shape[0] not in (1, batch):
        raise ValueError(
            f"positions shape {positions.shape} does not match x of shape {x.shape}: expected [{batch}, {seq}], "
            f"[1, {seq}] or [{seq}]"
        )

    inv_freq = jnp.asarray(inv_freq)
    if inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must have rank 1 [rot_dim // 2], got shape {inv_freq.shape}")
    n = inv_freq.shape[0]
    if not 1 <= n <= head_dim // 2:
        raise ValueError(
            f"inv_freq has {n} frequencies but x has head_dim {head_dim}: expected between 1 and head_dim // 2 = "
            f"{head_dim // 2}"
        )

    compute = jnp.promote_types(x.dtype, jnp.float32)
    angles = positions.astype(compute)[:, :, None] * inv_freq.astype(compute)  # [batch|1, seq, n]
    cos = (jnp.cos(angles) * attention_scale).astype(compute)[:, :, None, :]  # broadcast over heads
    sin = (jnp.sin(angles) * attention_scale).astype(compute)[:, :, None, :]

    first = x[..., :n].astype(compute)
    second = x[..., n : 2 * n].astype(compute)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).astype(x.dtype)
    if 2 * n == head_dim:
        return rotated
    return jnp.concatenate([rotated, x[..., 2 * n :]], axis=-1)
