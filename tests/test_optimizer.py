"""Per-module optimizer options: `opt.lr_scale` and `opt.sgd`."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from bytelm.training import optimizer


def opt_config(**changes):
  c = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, final_lr_fraction=0.1,
      b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, grad_clip=1.0, z_loss=0.0,
      lr_scale={}, sgd={}))
  c.update(changes)
  return c


PARAMS = {"gate": {"kernel": jnp.ones((3, 1)), "bias": jnp.ones((1,))},
          "gates": {"kernel": jnp.ones((3,))},  # not the module "gate"
          "encoder": {"kernel": jnp.ones((2, 2))}}


def updates(opt, grads):
  tx, _ = optimizer.make_optimizer(opt, total_steps=10)
  out, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  return out


def test_sgd_modules_step_by_their_gradient_outside_the_clipping():
  rng = np.random.default_rng(0)
  grads = {"gate": {"kernel": jnp.asarray(rng.normal(size=(3, 1)) * 1e3),
                    "bias": jnp.asarray([-2e3])},
           "gates": {"kernel": jnp.asarray(rng.normal(size=(3,)))},
           "encoder": {"kernel": jnp.asarray(rng.normal(size=(2, 2)) * 1e-3)}}
  out = updates(opt_config(sgd={"gate": 0.5}), grads)
  # Plain SGD: proportional to the gradient, not clipped although its norm is ~2000.
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(out["gate"][name], -0.5 * grads["gate"][name], rtol=1e-6)
  # Everyone else: AdamW with clipping over their own gradients only, as if the gate were not
  # there (the gate's huge gradient would otherwise scale theirs by ~1/2000).
  rest = {k: v for k, v in PARAMS.items() if k != "gate"}
  tx, _ = optimizer.make_optimizer(opt_config(eps=1e-2), total_steps=10)
  expected, _ = tx.update({k: grads[k] for k in rest}, tx.init(rest), rest)
  got = updates(opt_config(eps=1e-2, sgd={"gate": 0.5}), grads)
  for k in rest:
    np.testing.assert_allclose(got[k]["kernel"], expected[k]["kernel"], rtol=1e-6)


def test_sgd_follows_the_schedule_shape():
  opt = opt_config(schedule="linear", final_lr_fraction=0.0, sgd={"gate": 0.5})
  tx, schedule = optimizer.make_optimizer(opt, total_steps=10)
  grads = {k: {n: jnp.ones_like(v) for n, v in m.items()} for k, m in PARAMS.items()}
  state = tx.init(PARAMS)
  for step in range(3):
    out, state = tx.update(grads, state, PARAMS)
    np.testing.assert_allclose(out["gate"]["bias"], -0.5 * schedule(step) / opt.lr, rtol=1e-6)


def test_lr_scale_multiplies_one_module():
  grads = {k: {n: jnp.ones_like(v) for n, v in m.items()} for k, m in PARAMS.items()}
  plain = updates(opt_config(), grads)
  scaled = updates(opt_config(lr_scale={"gate": 0.25}), grads)
  np.testing.assert_allclose(scaled["gate"]["kernel"], 0.25 * plain["gate"]["kernel"])
  np.testing.assert_allclose(scaled["gates"]["kernel"], plain["gates"]["kernel"])
