"""Chunked causal linear attention (Based / PLA prefill) with the Taylor feature map folded in."""
