"""The Flax side of tests/test_flax.py, run in a child process: ``python flax_cases.py OUT.npz``.

JAX starts threads when it is imported, and a process that forks afterwards (tests/test_threads.py does)
may deadlock its child on a lock one of them held; so the tests' own process never imports it.  Every
case's data comes from its seed (``data``, ``params``), so that the test process builds the same arrays.
"""
import sys

import numpy as np

SHAPES = {"rows": (4, 6, 8), "images": (2, 5, 5, 8), "batch": (16, 3, 8)}


def data(seed, shape, offset=3.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask.reshape(-1, shape[-1])[:, 0] = True  # no statistic of no value
    return x, mask


def params(seed, shape):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.uniform(0.5, 2, n).astype(np.float32).reshape(shape),
            rng.standard_normal(n).astype(np.float32).reshape(shape))


def main(path):
    import jax
    import flax.linen as nn

    def apply(module, x, values, **kwargs):
        variables = jax.tree_util.tree_map(np.asarray, module.init(jax.random.PRNGKey(0), x, **kwargs))
        variables["params"].update(values)
        y, state = module.apply(variables, x, mutable=["batch_stats"], **kwargs)
        return np.asarray(y), jax.tree_util.tree_map(np.asarray, state)

    out = {}
    for masked in (False, True):
        x, mask = data(0, SHAPES["rows"])
        m = mask if masked else None
        for k in (1, 2):
            axes = tuple(range(-k, 0))
            w, b = params(1, x.shape[-k:])
            out[f"layer_norm-{k}-{masked}"] = apply(nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes,
                                                                 use_fast_variance=False), x, {"scale": w, "bias": b},
                                                    mask=m)[0]
            out[f"rms_norm-{k}-{masked}"] = apply(nn.RMSNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes), x,
                                                  {"scale": w}, mask=m)[0]
        x, mask = data(2, SHAPES["images"])
        m = mask if masked else None
        w, b = params(3, (8,))
        out[f"group_norm-{masked}"] = apply(nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False), x,
                                            {"scale": w, "bias": b}, mask=m)[0]
        out[f"instance_norm-{masked}"] = apply(nn.InstanceNorm(epsilon=1e-5, use_fast_variance=False), x,
                                               {"scale": w, "bias": b}, mask=m)[0]
        x, mask = data(6, SHAPES["batch"])
        m = mask if masked else None
        module = nn.BatchNorm(axis=-1, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
        y, state = apply(module, x, {"scale": w, "bias": b}, use_running_average=False, mask=m)
        out[f"batch_norm-{masked}"] = y
        out[f"batch_norm-mean-{masked}"] = state["batch_stats"]["mean"]
        out[f"batch_norm-var-{masked}"] = state["batch_stats"]["var"]
        out[f"batch_norm-eval-{masked}"] = np.asarray(module.apply(
            {"params": {"scale": w, "bias": b}, "batch_stats": state["batch_stats"]}, x, use_running_average=True))
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
