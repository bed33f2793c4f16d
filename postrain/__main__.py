"""`python -m postrain`: a tiny, self-contained demo of the pure loss functions on CPU."""

import jax
import jax.numpy as jnp

from postrain import advantages, losses


def main() -> None:
  key_logp, key_old, key_reward = jax.random.split(jax.random.key(0), 3)
  batch, length, group_size = 8, 16, 4
  logp = -jax.random.uniform(key_logp, (batch, length), minval=0.1, maxval=3.0)
  old_logp = logp + 0.05 * jax.random.normal(key_old, (batch, length))
  mask = jnp.ones((batch, length)).at[:, 12:].set(0.0)
  rewards = jax.random.bernoulli(key_reward, 0.5, (batch,)).astype(jnp.float32)
  adv = advantages.group_normalized(rewards, group_size=group_size)
  print(f"rewards    {rewards}")
  print(f"advantages {adv}")
  for level in ("token", "sequence", "sequence_token"):
    loss_fn = jax.jit(
      jax.value_and_grad(
        lambda lp, level=level: losses.ppo_clip(
          lp, old_logp, adv, mask, eps_low=0.2, eps_high=0.28, level=level
        )[0]
      )
    )
    loss, grad = loss_fn(logp)
    print(
      f"ppo_clip level={level:15s} loss={float(loss):+.5f} |grad|={float(jnp.linalg.norm(grad)):.5f}"
    )
  loss, aux = jax.jit(lambda lp: losses.conspo(lp, mask, rewards, group_size=group_size))(logp)
  print(f"conspo loss={float(loss):+.5f} groups_with_contrast={float(aux['contrast_frac']):.2f}")


if __name__ == "__main__":
  main()
