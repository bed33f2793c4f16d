"""Fused kernels (installed as `postrain.kernels`)."""
