"""Fused Triton kernels for the DiT's memory-bound ops, each beside its plain-torch reference.

The references are the documentation and the test oracle: each computes its op exactly as
`engine/dit.py` does, op for op. The Triton launchers take CUDA tensors (or CPU tensors under
`TRITON_INTERPRET=1`, which is how the tests check them on a machine without a GPU); given CPU
tensors otherwise, they run the reference. `engine/accelerate.py` puts them into the model.

Every module here imports Triton, which ships for Linux x86-64 only: import them where CUDA is.

Each launch names its FMA contraction (`enable_fp_fusion`): on, as every tile and timing here was
measured, where Triton 3.10 turns the default off (3.9 warns about it at each compile); off where a
kernel's integers must match the W8A8 quantizer's arithmetic op for op.
"""

from quant.triton_support import require_triton

require_triton()  # before any kernel module: a missing or too old Triton is an ImportError that says why
