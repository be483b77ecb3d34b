"""Dense-layer products with operands in a chosen dtype, accumulated in float32.

The transformer's layers run their products through `project`, so that `matmul_dtype`
'bfloat16' rounds only the products' operands while the rest of the network computes in
float32. That suits CPUs with bfloat16 matrix units (Intel AMX, md4.hardware.cpu_has_amx);
the layout of each product (flattened leading axes, one concatenated kernel on CPUs, a
leading axis of size 1 for 16-bit operands) is chosen so that XLA's CPU backend runs it on
its fast kernels. docs/experiments.md has the measurements behind each choice.

Shapes: N rows (the flattened leading axes), D input width, F output width.
"""

import jax
import jax.numpy as jnp
import numpy as np


def float32_matmul(x, w):
  """x [N, D] · w [D, F] with operands in their dtype, accumulated and returned in float32."""
  if x.dtype == w.dtype == jnp.float32:
    return x @ w
  return low_precision_matmul(x, w)


def _matmul(spec, a, b):
  """einsum(spec, a, b) accumulated in float32, on operands with a leading axis of size 1.

  With that axis XLA's CPU backend runs all three products of a layer in 16 bits on its
  YNNPACK kernels (AMX units where the CPU has them); as 2-D products it runs x·wᵀ slower
  and hands xᵀ·g to Eigen, which first converts both operands to float32. Elsewhere the
  axis costs nothing.
  """
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def low_precision_matmul(x, w):
  """float32_matmul for 16-bit operands, x [N, D] · w [D, F] -> [N, F] float32; its
  backward products are 16-bit too (the float32 cotangent is rounded first), so they never
  fall back to float32 products."""
  return _matmul('knd,df->knf', x[None], w)[0]


def _low_precision_matmul_fwd(x, w):
  return low_precision_matmul(x, w), (x, w)


def _low_precision_matmul_bwd(residuals, g):  # g [N, F] float32
  x, w = residuals
  g = g.astype(x.dtype)[None]  # [1, N, F]
  dx = _matmul('knf,df->knd', g, w)[0]  # [N, D]
  dw = _matmul('knd,knf->df', x[None], g)  # [D, F]
  return dx.astype(x.dtype), dw.astype(w.dtype)


low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def _concatenated(x2, *kernels):
  """[x2 · k for k in kernels] as one product with the kernels side by side [D, ΣF_i]."""
  y = float32_matmul(x2, jnp.concatenate(kernels, axis=1))  # [N, ΣF_i]
  return jnp.split(y, np.cumsum([k.shape[1] for k in kernels])[:-1], axis=1)


def _separate(x2, *kernels):
  """[x2 · k for k in kernels], each its own product."""
  return [float32_matmul(x2, k) for k in kernels]


def project(x, kernels, dtype, matmul_dtype):
  """x [..., D] times each kernel [D, F_i] (bias-free dense layers on one input).

  The leading axes are flattened first, so each product is one [N, D] matrix times a
  kernel: XLA's CPU backend runs the backward pass of a contraction over [B, L, D] slower.
  On CPUs the kernels are also concatenated into one [D, ΣF_i] product (q, k and v; W1 and
  W3: a faster backward pass there); on other platforms each stays its own product, so that
  a kernel sharded along heads or MLP units keeps its sharding. The choice is made where
  the program is lowered (jax.lax.platform_dependent), not by the host that traces it, so a
  program exported from a CPU host for GPUs or TPUs has no CPU-only product in it. Returns
  one [..., F_i] array per kernel, in `dtype`.
  """
  d = x.shape[-1]
  x2 = x.reshape(-1, d).astype(matmul_dtype)  # [N, D]
  kernels = [k.astype(matmul_dtype) for k in kernels]
  if len(kernels) > 1:
    ys = jax.lax.platform_dependent(x2, *kernels, cpu=_concatenated, default=_separate)
  else:
    ys = _separate(x2, *kernels)
  return [y.astype(dtype).reshape(x.shape[:-1] + y.shape[-1:]) for y in ys]
