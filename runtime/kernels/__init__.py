"""Custom kernels: each module holds a Triton kernel and the plain-torch reference it must match.

Import from `infleet.runtime.kernels.dispatch`: it runs the Triton kernel on CUDA tensors and the reference (or
PyTorch's own CPU kernel) elsewhere, and imports Triton code only when a CUDA tensor first needs it.
"""
