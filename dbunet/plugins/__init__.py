"""Fused kernels for the DB-UNet's custom ops: Triton kernels, their op table, TensorRT plugins.

Triton and TensorRT are imported lazily: the package loads (and the CPU path works) without them.
"""
