"""The attention kernel: softmax(q k^T + biases) v with a memory-lean custom gradient.

Axis legend: B batch, H heads, T queries, S keys, K head dim.

Plain autodiff of attention keeps the B*H*T*S probabilities for the backward pass and
differentiates softmax through its exp / sum / divide chain. This kernel keeps only the output
and each query's score maximum m and exp-sum z (FlashAttention's bookkeeping, without the
tiling) and recomputes the probabilities in the backward pass, by the forward's own formula:

    p = exp(s - m) / z,  dp = do v^T,  ds = p * (dp - rowsum(do * o)),
    dq = ds k,  dk = ds^T q,  dv = p^T do,  dbias = ds (summed to the bias's shape).

On a 2-core CPU this makes the ByT5 train step at 8 x 1024 bytes about 25% faster
(eval/speed.py, BENCHMARKS.md), and it is the same arithmetic on accelerators. `abstain=True` is
softmax1 (MrT5): an implicit extra zero logit, so z = exp(-m) + sum exp(s - m); the gradient
formula is the same because rowsum(dp * p) still equals rowsum(do * o).

On a CPU both passes may run through fused C++ kernels instead (bytelm.nn.cpu_attention, chosen
per machine): the same formulas, the scores kept in cache. `xla_forward` and `xla_backward`
are the jnp versions every backend has, and the reference the kernels are checked against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bytelm.nn import cpu_attention, precision


def scores(q_BHTK, k_BHSK, pos_bias, key_bias_BS):
  """fp32 scores plus biases, added as HF does: scores + (position + key). With bf16 q and k,
  the product is the matmul's fp32 accumulator, not scores rounded to bf16
  (bytelm.nn.precision)."""
  s_BHTS = precision.einsum("...HTK,...HSK->...HTS", q_BHTK, k_BHSK, jnp.float32)
  bias = pos_bias
  if key_bias_BS is not None:
    kb = key_bias_BS[..., None, None, :]
    bias = kb if bias is None else bias + kb
  return s_BHTS if bias is None else s_BHTS + bias


def _softmax(s_BHTS, abstain: bool):
  """(probabilities, max m, exp-sum z) per query: p = exp(s - m) / z, one exp per score (as
  PyTorch's softmax; exp(s - log-sum-exp) would take a second exp over all B*H*T*S scores,
  about a fifth of a CPU attention's time). The backward pass recomputes p from m and z by the
  same formula, so the probabilities it differentiates are the forward's to the last bit."""
  m_BHT1 = jnp.max(s_BHTS, axis=-1, keepdims=True)
  if abstain:
    m_BHT1 = jnp.maximum(m_BHT1, 0.0)
  e_BHTS = jnp.exp(s_BHTS - m_BHT1)
  total_BHT1 = jnp.sum(e_BHTS, axis=-1, keepdims=True)
  if abstain:
    total_BHT1 = total_BHT1 + jnp.exp(-m_BHT1)  # the implicit zero logit
  return e_BHTS / total_BHT1, m_BHT1, total_BHT1


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attention(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain: bool = False):
  """softmax(q k^T + pos_bias + key_bias) v, in q's dtype with fp32 scores and softmax.

  Args:
    pos_bias: None, or fp32 (H, T, S) / (B, H, T, S): relative positions, causal mask.
    key_bias_BS: None, or fp32 (B, S): padding mask, MrT5's delete gate.
    abstain: softmax1 instead of softmax.
  """
  return _forward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain)[0]


def _forward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain):
  """(out, (m, z)): on a CPU, through the fused kernel where this machine chose it for the
  dtype (bytelm.nn.cpu_attention: same arithmetic, scores kept in cache), else XLA's."""
  if cpu_attention.applies(q_BHTK, k_BHSK, v_BHSK):
    o_BHTK, m_BHT1, z_BHT1 = cpu_attention.attention(q_BHTK, k_BHSK, v_BHSK, pos_bias,
                                                     key_bias_BS, abstain)
    return o_BHTK, (m_BHT1, z_BHT1)
  o_BHTK, m_BHT1, z_BHT1 = xla_forward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain)
  return o_BHTK, (m_BHT1, z_BHT1)


def xla_forward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain):
  """(out, m, z) as XLA computes them on any backend: scores, softmax and p v as jnp ops."""
  s_BHTS = scores(q_BHTK, k_BHSK, pos_bias, key_bias_BS)
  p_BHTS, m_BHT1, z_BHT1 = _softmax(s_BHTS, abstain)
  p_BHTS = p_BHTS.astype(v_BHSK.dtype)
  o_BHTK = precision.product("...HTS,...HSK->...HTK", p_BHTS, v_BHSK, v_BHSK.dtype)
  return o_BHTK, m_BHT1, z_BHT1


def _fwd(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain):
  o_BHTK, (m_BHT1, z_BHT1) = _forward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain)
  return o_BHTK, (q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, o_BHTK, m_BHT1, z_BHT1)


def _bwd(abstain, res, do_BHTK):
  """The cotangents of q, k, v and both biases: through the fused kernel where this machine
  chose it (bytelm.nn.cpu_attention), else XLA's."""
  del abstain  # m and z hold it; the formula is the same
  q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS = res[:5]
  if cpu_attention.applies(q_BHTK, k_BHSK, v_BHSK, backward=True):
    dq, dk, dv, d_pos, d_key = cpu_attention.attention_backward(*res, do_BHTK)
    d_pos = None if pos_bias is None else _sum_to(d_pos, pos_bias.shape)
    d_key = None if key_bias_BS is None else d_key.reshape(key_bias_BS.shape)
    return dq, dk, dv, d_pos, d_key
  return xla_backward(*res, do_BHTK)


def xla_backward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, o_BHTK, m_BHT1, z_BHT1,
                 do_BHTK):
  """(dq, dk, dv, d_pos, d_key) as XLA computes them on any backend (the module docstring's
  formula), from the forward's inputs, output, m and z and the output's cotangent."""
  p_BHTS = jnp.exp(scores(q_BHTK, k_BHSK, pos_bias, key_bias_BS) - m_BHT1) / z_BHT1
  dp_BHTS = precision.product("...HTK,...HSK->...HTS", do_BHTK, v_BHSK, jnp.float32)
  delta_BHT1 = jnp.sum(do_BHTK.astype(jnp.float32) * o_BHTK.astype(jnp.float32), axis=-1,
                       keepdims=True)
  ds_BHTS = p_BHTS * (dp_BHTS - delta_BHT1)  # fp32
  dtype = q_BHTK.dtype
  dq = precision.product("...HTS,...HSK->...HTK", ds_BHTS.astype(dtype), k_BHSK, dtype)
  dk = precision.product("...HTS,...HTK->...HSK", ds_BHTS.astype(dtype), q_BHTK, dtype)
  dv = precision.product("...HTS,...HTK->...HSK", p_BHTS.astype(dtype), do_BHTK, dtype)
  d_pos = None if pos_bias is None else _sum_to(ds_BHTS, pos_bias.shape)
  d_key = None if key_bias_BS is None else jnp.sum(ds_BHTS, axis=(-3, -2)).reshape(
      key_bias_BS.shape)
  return dq, dk, dv, d_pos, d_key


def _sum_to(x, shape):
  """Sum x over the leading axes it has beyond `shape` (undoing broadcasting)."""
  lead = x.ndim - len(shape)
  if lead:
    x = _sum_leading(x.reshape((-1,) + x.shape[lead:]))
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _sum_leading(x_N):
  """x_N summed over its first axis, by halving: x[:n/2] + x[n/2:] until one slice is left.

  XLA's CPU reduction over a short leading axis of a large array runs at under 1 GB/s (the
  batch sum of a (8, 4, 1024, 1024) score gradient took 185 ms, 1.2 s of a 6 s `mini` train
  step over 6 layers); the same sum as elementwise adds of halves takes 9 ms. Same result up
  to the order of the float additions.
  """
  while x_N.shape[0] > 1:
    half = x_N.shape[0] // 2
    summed = x_N[:half] + x_N[half:2 * half]
    x_N = summed.at[0].add(x_N[2 * half]) if x_N.shape[0] % 2 else summed
  return x_N[0]


attention.defvjp(_fwd, _bwd)


def library_attention(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS,
                      implementation: str | None = None):
  """The same softmax(q k^T + pos_bias + key_bias) v through `jax.nn.dot_product_attention`
  (no score scaling, as T5; the biases added as one, as `scores` adds them), for a backend
  that has a fused attention of its own: implementation "cudnn" is cuDNN's flash attention on
  an NVIDIA GPU (16-bit dtypes only), "xla" or None jax's XLA version, whose gradient is plain
  autodiff (it keeps the B H T S probabilities; `attention` recomputes them)."""
  bias = pos_bias
  if key_bias_BS is not None:
    kb = key_bias_BS[..., None, None, :]
    bias = kb if bias is None else bias + kb
  if bias is not None and bias.ndim == 3:
    bias = bias[None]
  if bias is not None and implementation == "cudnn":
    # cuDNN takes the bias in q's 16-bit dtype, where MASK_VALUE sums overflow to -inf (and
    # jax's own mask for it is -2**41, for a cuDNN bug with two large negatives): any masked
    # score here is far below -1e9, which exp still takes to 0.
    bias = jnp.maximum(bias, -1e9).astype(q_BHTK.dtype)
  out_BTHK = jax.nn.dot_product_attention(
      q_BHTK.swapaxes(1, 2), k_BHSK.swapaxes(1, 2), v_BHSK.swapaxes(1, 2), bias=bias,
      scale=1.0, implementation=implementation)
  return out_BTHK.swapaxes(1, 2)
