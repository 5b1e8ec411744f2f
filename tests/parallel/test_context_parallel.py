"""Context parallelism (`jrt_jax.parallel`): every op on a sequence sharded over simulated devices equals the
one-device op — outputs, returned states and gradients — with packed documents crossing shard boundaries,
padding, an all-padding shard inside a document, and a PLA encoder longer than one shard.

The comparisons run in one subprocess with 8 simulated CPU devices (XLA_FLAGS must be set before JAX starts):

    python -m tests.parallel.test_context_parallel OUT.json     # the worker; writes the measured errors
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

from tests.helpers import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOL = 1e-5
MESHES = ["seq2", "seq4", "seq8", "data2xseq4"]


# --------------------------------------------------------------------------------------------------------------
# The worker (runs in the subprocess)
# --------------------------------------------------------------------------------------------------------------

B, T, H, F, D = 2, 32, 2, 4, 4


def _segments():
    import numpy as np

    # Row 0: doc 1 (5), doc 2 from position 5 (crosses 8 and 16; 2 pads inside), doc 3, trailing pads.
    # Row 1: leading pads, doc 7 across an all-padding stretch (a whole shard at 8 shards), doc 8.
    row0 = [1] * 5 + [2] * 13 + [0] * 2 + [2] * 3 + [3] * 6 + [0] * 3
    row1 = [0] * 3 + [7] * 13 + [0] * 4 + [7] * 3 + [8] * 9
    return np.array([row0, row1], np.int32)


def _inputs():
    import jax.numpy as jnp
    import numpy as np

    from jrt_jax.nn.padding import document_positions
    from jrt_jax.ops import LinearAttentionState
    from jrt_jax.ops.feature_map import taylor_feature_dim

    rng = np.random.default_rng(0)
    f32 = lambda *s, scale=1.0: jnp.asarray(rng.normal(size=s) * scale, jnp.float32)
    seg = jnp.asarray(_segments())
    phi = taylor_feature_dim(F, compact=True)
    state = lambda: LinearAttentionState(jnp.asarray(rng.uniform(0, 0.3, (B, H, phi, D)), jnp.float32),
                                         jnp.asarray(rng.uniform(0.5, 1.0, (B, H, phi)), jnp.float32))
    qkv = lambda: (f32(B, T, H, F, scale=0.5), f32(B, T, H, F, scale=0.5), f32(B, T, H, D))
    left_pad = jnp.arange(T)[None, :] >= jnp.array([[0], [5]])  # row 1 left-padded by 5
    doc_pos = document_positions(None, seg, B, T)
    p = {
        "la": qkv() + (state(),),
        "la_packed": qkv() + (state(),),
        "pla": qkv() + (f32(B, 20, H, F, scale=0.5), f32(B, 20, H, D), state()),  # M = 20 > T/2
        "pla_packed": qkv() + (f32(B, T, H, F, scale=0.5), f32(B, T, H, D), state()),
        "swa": (f32(B, T, H, 8), f32(B, T, H, 8), f32(B, T, H, 8)),
        "swa_packed": (f32(B, T, H, 8), f32(B, T, H, 8), f32(B, T, H, 8)),
        "conv": (f32(B, T, 6), f32(3, 6), f32(B, 2, 6)),
        "conv_packed": (f32(B, T, 6), f32(3, 6)),
        "attn": (f32(B, T, 4, 8), f32(B, T, 2, 8), f32(B, T, 2, 8)),
        "attn_packed": (f32(B, T, 4, 8), f32(B, T, 2, 8), f32(B, T, 2, 6)),
    }
    aux = {"seg": seg, "left_pad": left_pad, "enc_mask": seg.astype(bool) & (doc_pos < 12)}
    return p, aux


def _run_ops(p, aux, impl):
    """Every op once. `impl` maps an op name to a callable with the ops' signature (global arrays)."""
    seg, left_pad, enc_mask = aux["seg"], aux["left_pad"], aux["enc_mask"]
    out = {}
    q, k, v, st = p["la"]
    out["la"] = impl["linear_attention"](q, k, v, mask=left_pad, padding="zero_keys", initial_state=st,
                                         return_state=True)
    q, k, v, st = p["la_packed"]
    out["la_packed"] = impl["linear_attention"](q, k, v, segment_ids=seg, initial_state=st, return_state=True)
    q, k, v, ke, ve, st = p["pla"]
    out["pla"] = impl["prefix_linear_attention"](q, k, v, ke, ve, mask=left_pad, initial_state=st, return_state=True)
    q, k, v, ke, ve, st = p["pla_packed"]
    out["pla_packed"] = impl["prefix_linear_attention"](q, k, v, ke, ve, segment_ids=seg, enc_mask=enc_mask,
                                                        initial_state=st, return_state=True)
    out["swa"] = impl["sliding_window_attention"](*p["swa"], window=3, mask=left_pad)
    out["swa_packed"] = impl["sliding_window_attention"](*p["swa_packed"], window=3, segment_ids=seg)
    x, w, tail = p["conv"]
    out["conv"] = impl["causal_conv1d"](x, w, initial_tail=tail, return_tail=True)
    out["conv_packed"] = impl["causal_conv1d"](*p["conv_packed"], segment_ids=seg, return_tail=True)
    out["attn"] = impl["causal_attention"](*p["attn"], mask=left_pad)
    out["attn_packed"] = impl["causal_attention"](*p["attn_packed"], segment_ids=seg)
    return out


def _max_err(a, b):
    """Largest |a − b| over the leaves, relative to max(1, max |b|) of each leaf."""
    import jax
    import numpy as np

    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(y)))))
    return worst


def _worker(out_path):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from jrt_jax import ops, parallel
    from jrt_jax.nn.padding import document_positions

    assert jax.device_count() == 8, jax.devices()
    names = ["linear_attention", "prefix_linear_attention", "sliding_window_attention", "causal_conv1d",
             "causal_attention"]
    p, aux = _inputs()
    single = {name: getattr(ops, name) for name in names}

    def forward_and_grads(impl, p, aux):
        f = lambda params: _run_ops(params, aux, impl)
        outs, vjp = jax.vjp(f, p)
        rng = np.random.default_rng(1)
        cts = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), outs)
        return outs, vjp(cts)[0]

    t0 = time.perf_counter()
    ref_out, ref_grad = jax.jit(lambda p, aux: forward_and_grads(single, p, aux))(p, aux)
    devices = np.array(jax.devices())
    meshes = {
        "seq2": (Mesh(devices[:2], ("sequence",)), None),
        "seq4": (Mesh(devices[:4], ("sequence",)), None),
        "seq8": (Mesh(devices, ("sequence",)), None),
        "data2xseq4": (Mesh(devices.reshape(2, 4), ("data", "sequence")), "data"),
    }
    result = {}
    for tag, (mesh, batch_axis) in meshes.items():
        sharded = {name: parallel.context_parallel(getattr(parallel, name), mesh, "sequence", batch_axis=batch_axis,
                                                   jit=False) for name in names}
        out, grad = jax.jit(lambda p, aux: forward_and_grads(sharded, p, aux))(p, aux)
        errs = {}
        for op in ref_out:
            errs[op] = {"output": _max_err(out[op], ref_out[op]), "grad": _max_err(grad[op], ref_grad[op])}
        pos = parallel.global_document_positions(None, aux["seg"], mesh, "sequence", batch_axis=batch_axis)
        want = document_positions(None, aux["seg"], B, T)
        errs["document_positions"] = {"output": float(np.max(np.abs(np.asarray(pos) - np.asarray(want)))),
                                      "grad": 0.0}
        result[tag] = errs
        print(f"{tag} ({time.perf_counter() - t0:.0f} s)", json.dumps(errs), flush=True)
    result["errors"] = _bad_input_messages()
    result["explicit_mesh"] = _explicit_mesh_error(p, aux)
    print(f"bad inputs ({time.perf_counter() - t0:.0f} s)", flush=True)
    pathlib.Path(out_path).write_text(json.dumps(result, indent=1))


def _bad_input_messages():
    """The messages of the bad-input cases (each must be a clear ValueError)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P

    from jrt_jax import parallel

    mesh = Mesh(np.array(jax.devices()[:4]), ("sequence",))
    x = jnp.ones((1, 30, 2, 4), jnp.float32)
    y = jnp.ones((1, 32, 2, 8), jnp.float32)
    msgs = {}

    def catch(tag, fn):
        try:
            fn()
            msgs[tag] = None
        except ValueError as e:
            msgs[tag] = str(e)

    la = parallel.context_parallel(parallel.linear_attention, mesh, "sequence")
    catch("indivisible", lambda: la(x, x, x))
    catch("axis_not_in_mesh", lambda: parallel.context_parallel(parallel.linear_attention, mesh, "seq"))
    swa = parallel.context_parallel(parallel.sliding_window_attention, mesh, "sequence")
    catch("window_too_long", lambda: swa(y, y, y, window=9))
    conv = parallel.context_parallel(parallel.causal_conv1d, mesh, "sequence")
    catch("conv_halo_too_long", lambda: conv(jnp.ones((1, 8, 3)), jnp.ones((4, 3))))
    unbound = jax.shard_map(lambda a: parallel.linear_attention(a, a, a, axis_name="seq"), mesh=mesh,
                            in_specs=P(None, "sequence"), out_specs=P(None, "sequence"))
    catch("unbound_axis_in_shard_map", lambda: jax.jit(unbound)(y))
    catch("unbound_axis_outside", lambda: parallel.linear_attention(y, y, y, axis_name="sequence"))
    checked = jax.shard_map(lambda a: parallel.linear_attention(a, a, a, axis_name="sequence"), mesh=mesh,
                            in_specs=P(None, "sequence"), out_specs=P(None, "sequence"))  # check_vma=True
    catch("check_vma", lambda: jax.jit(checked)(y))
    return msgs


def _explicit_mesh_error(p, aux):
    """`context_parallel` on a `jax.make_mesh` mesh (Explicit axes: inputs are resharded first), forward."""
    import jax

    from jrt_jax import ops, parallel

    mesh = jax.make_mesh((2, 4), ("data", "sequence"))
    q, k, v, st = p["la_packed"]
    la = parallel.context_parallel(parallel.linear_attention, mesh, "sequence", batch_axis="data")
    got = la(q, k, v, segment_ids=aux["seg"], initial_state=st, return_state=True)
    return _max_err(got, ops.linear_attention(q, k, v, segment_ids=aux["seg"], initial_state=st, return_state=True))


# --------------------------------------------------------------------------------------------------------------
# The test (runs the worker once)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp") / "errors.json"
    # 8 simulated devices; optimisation level 0 cuts XLA:CPU compile time by a third (numerics are unchanged:
    # fp32 throughout, no fast-math either way).
    env = simulated_devices_env(8, fast_compile=True, pythonpath=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.parallel.test_context_parallel", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    print(proc.stdout)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_ops_equal_one_device(measured, mesh):
    errs = measured[mesh]
    bad = {op: e for op, e in errs.items() if not (e["output"] <= TOL and e["grad"] <= TOL)}
    assert not bad, (mesh, bad)
    assert set(errs) >= {"la", "la_packed", "pla", "pla_packed", "swa", "swa_packed", "conv",
                         "conv_packed", "attn", "attn_packed", "document_positions"}


@pytest.mark.slow
def test_explicit_axes_mesh(measured):
    assert measured["explicit_mesh"] <= TOL


@pytest.mark.slow
def test_bad_input_raises_clear_errors(measured):
    msgs = measured["errors"]
    assert "not divisible" in msgs["indivisible"] and "30" in msgs["indivisible"]
    assert "not an axis of the mesh" in msgs["axis_not_in_mesh"] and "'seq'" in msgs["axis_not_in_mesh"]
    assert "window = 9" in msgs["window_too_long"] and "longer than one shard" in msgs["window_too_long"]
    assert "kernel size − 1 = 3" in msgs["conv_halo_too_long"]
    assert msgs["check_vma"] is not None and "check_vma=False" in msgs["check_vma"]
    for tag in ("unbound_axis_in_shard_map", "unbound_axis_outside"):
        assert msgs[tag] is not None and "is not a mesh axis bound here" in msgs[tag], msgs[tag]


if __name__ == "__main__":
    _worker(sys.argv[1])
