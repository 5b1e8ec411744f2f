"""`python -m jrt_jax`: check prefix linear attention against its reference, then time the prefill.

    python -m jrt_jax                      # T = 1k, 2k, 4k on whatever device JAX sees
    python -m jrt_jax --seq-lens 1024 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from jrt_jax import benchmarking as bm
from jrt_jax import cli, ops


def check_against_reference(seed: int = 0) -> dict[str, float]:
    """Relative errors of the chunked path (outputs, gradient, prefill + decode) against the quadratic reference."""
    b, t, h, f, d, m = 2, 777, 4, 16, 32, 300
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    q, k = (jax.random.normal(kk, (b, t, h, f)) for kk in ks[:2])
    v = jax.random.normal(ks[2], (b, t, h, d))
    k_enc, v_enc = jax.random.normal(ks[3], (b, m, h, f)), jax.random.normal(ks[4], (b, m, h, d))
    rel = lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))

    ref = ops.prefix_linear_attention(q, k, v, k_enc, v_enc, implementation="reference")
    out = ops.prefix_linear_attention(q, k, v, k_enc, v_enc, implementation="xla")
    grad = lambda impl: jax.grad(
        lambda q_: jnp.sum(jnp.sin(ops.prefix_linear_attention(q_, k, v, k_enc, v_enc, implementation=impl)))
    )(q)
    prompt = 700
    _, state = ops.prefix_linear_attention(
        q[:, :prompt], k[:, :prompt], v[:, :prompt], k_enc, v_enc, implementation="xla", return_state=True
    )
    decoded = []
    for i in range(prompt, t):
        y, state = ops.linear_attention_step(state, q[:, i], k[:, i], v[:, i])
        decoded.append(y)
    return {
        "output": rel(out, ref),
        "d/dq": rel(grad("xla"), grad("reference")),
        "prefill+decode": rel(jnp.stack(decoded, 1), ref[:, prompt:]),
    }


def main(argv=None) -> None:
    p = cli.ArgumentParser(prog="python -m jrt_jax", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096],
                   help="prompt lengths to time (dot_product_attention holds T x T x 16 fp32 scores: 4 GiB at 8192)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print("\nPrefix linear attention, chunked xla path vs quadratic reference (B=2 T=777 H=4 F=16 D=32 M=300, fp32):")
    errors = check_against_reference()
    for name, err in errors.items():
        print(f"  {name:<16} max relative error {err:.2e}  {'ok' if err <= 1e-5 else 'FAILED'}")

    print(f"\nPrefill, B=1 H=16 F=16 D=64 fp32; matmul ceiling {bm.matmul_ceiling_gflops():.1f} GFLOP/s")
    print(bm.TABLE_HEADER, flush=True)
    rows = bm.prefill_table(args.seq_lens, repeats=args.repeats, log=lambda line: print(line, flush=True))
    sp = bm.speedups(rows, "PLA (xla, M=T/2)")
    if sp:
        print("\nPLA speed-up over dot_product_attention: " + ", ".join(f"T={t}: {x:.1f}x" for t, x in sorted(sp.items())))
    if max(errors.values()) > 1e-5:
        raise cli.CommandFailed("the chunked path differs from the reference by more than 1e-5 (above)")


if __name__ == "__main__":
    sys.exit(cli.run_command(main, prog="python -m jrt_jax"))
