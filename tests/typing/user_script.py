# pyright: strict
"""A user's script on fastnorm's public API, written as users write code: annotated where a type matters.

tests/test_typing.py type-checks it with ``mypy --strict`` and pyright (strict) and runs it: every
annotation below is a type the API promises (a forward with ``return_stats=True`` is a tuple, without it
an array; a backward's gradient is None exactly when its parameter is), and every call runs.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
from numpy.typing import NDArray

import fastnorm
import fastnorm.functional as F
from fastnorm.preprocessing import StandardScaler

FloatArray = NDArray[np.floating[Any]]
Stats = NDArray[np.float64]


def layers(x: NDArray[np.float32]) -> None:
    bn = fastnorm.BatchNorm2d(3)
    y: NDArray[Any] = bn(x)
    dx: NDArray[Any] = bn.backward(np.ones_like(y))
    assert dx.shape == x.shape
    bn.eval()
    state: Dict[str, NDArray[Any]] = dict(bn.state_dict())
    assert state["running_mean"].shape == (3,)

    ln = fastnorm.LayerNorm((4, 5))
    with fastnorm.no_grad():
        y = ln(x)
    assert y.dtype == np.float32

    for layer in (fastnorm.GroupNorm(1, 3), fastnorm.InstanceNorm2d(3), fastnorm.RMSNorm(5)):
        y = layer(x)
        assert y.shape == x.shape


def functions(x: NDArray[np.float32]) -> None:
    running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    y: FloatArray = F.batch_norm(x, running_mean, running_var, training=True, momentum=None,
                                 num_batches_tracked=0)
    y, mean, invstd = F.batch_norm(x, training=True, return_stats=True)
    grads: Tuple[FloatArray, Stats, Stats] = F.batch_norm_backward(np.ones_like(y), x, mean, invstd)
    dx, dw, db = grads
    assert dx.shape == x.shape and dw.shape == db.shape == (3,)

    y, mean, rstd = F.layer_norm(x, (4, 5), np.ones((4, 5)), np.zeros((4, 5)), return_stats=True)
    dx, dw_ln, db_ln = F.layer_norm_backward(np.ones_like(y), x, (4, 5), mean, rstd, np.ones((4, 5)), np.zeros((4, 5)))
    total: float = float(dw_ln.sum() + db_ln.sum())  # both gradients are arrays: their parameters were given
    dx, no_weight, no_bias = F.layer_norm_backward(np.ones_like(y), x, (4, 5), mean, rstd)
    assert no_weight is None and no_bias is None and np.isfinite(total)

    y_rms, rstd_rms = F.rms_norm(x, 5, np.ones(5), return_stats=True)
    dx, dw_rms, _ = F.rms_norm_backward(np.ones_like(y_rms), x, 5, rstd_rms, np.ones(5))
    assert dw_rms.shape == (5,)

    y, mean, rstd = F.group_norm(x, 3, return_stats=True, channel_axis=1)
    dx, dw, db = F.group_norm_backward(np.ones_like(y), x, 3, mean, rstd)
    y, mean, rstd = F.instance_norm(x, return_stats=True)
    dx, dw, db = F.instance_norm_backward(np.ones_like(y), x, mean, rstd)
    # Given add=, the channel backwards return its gradient fourth; without it, three gradients.
    a = np.zeros_like(x)
    dx, dw, db, d_add = F.instance_norm_backward(np.ones_like(y), x, mean, rstd, channel_axis=1, activation="relu",
                                                 add=a, bias=np.zeros(3))
    dx, dw, db, d_add = F.group_norm_backward(np.ones_like(y), x, 3, mean, rstd, None, eps=None, add=a)
    y, mean, invstd = F.batch_norm(x, training=True, return_stats=True)
    with_add: Tuple[FloatArray, Stats, Stats, FloatArray] = F.batch_norm_backward(np.ones_like(y), x, mean, invstd,
                                                                                   mask=None, add=a)
    three: Tuple[FloatArray, Stats, Stats] = F.batch_norm_backward(np.ones_like(y), x, mean, invstd, None, True,
                                                                   channel_axis=1, activation="tanh")
    assert with_add[3].shape == d_add.shape == x.shape and len(three) == 3

    keep: bool = bool(np.random.default_rng(0).integers(2))
    either = fastnorm.layer_norm(x, 5, return_stats=keep)  # a bool known at run time only: either form
    y = either[0] if isinstance(either, tuple) else either
    assert y.shape == x.shape

    m, v = fastnorm.moments(x, axes=(0, 2, 3), keepdims=True)
    z: FloatArray = fastnorm.batch_normalization(x, m, v, offset=None, scale=None, variance_epsilon=1e-5)
    assert z.shape == x.shape


def split_batch_steps(x: NDArray[np.float32]) -> None:
    """PyTorch's SyncBatchNorm steps, as one process of one would run them."""
    count = x.size // 3
    mean, invstd = F.batch_norm_stats(x, 1e-5)
    mean, invstd = F.batch_norm_gather_stats_with_counts(x, [mean], [invstd], None, None, 0.1, 1e-5, [count])
    y: FloatArray = F.batch_norm_elemt(x, None, None, mean, invstd, 1e-5)
    sum_dy, sum_dy_xmu, _, grad_bias = F.batch_norm_backward_reduce(np.ones_like(y), x, mean, invstd, None, True,
                                                                    False, True)
    assert sum_dy is not None and sum_dy_xmu is not None and grad_bias is not None  # asked for
    dx: FloatArray = F.batch_norm_backward_elemt(np.ones_like(y), x, mean, invstd, None, sum_dy, sum_dy_xmu, [count])
    assert dx.shape == x.shape


def statistics(x: NDArray[np.float32]) -> None:
    whole = fastnorm.Moments.of(x, axes=(0, 2, 3))
    parts = fastnorm.Moments.of(x[:1], (0, 2, 3)) + fastnorm.Moments.of(x[1:], (0, 2, 3))
    var: Stats = parts.merge(fastnorm.Moments.empty(3)).var(unbiased=True)
    arrays: Dict[str, Stats] = whole.to_arrays()
    assert fastnorm.Moments.from_arrays(arrays) == whole and var.shape == (3,)

    scaler = StandardScaler(with_std=True).fit(x.reshape(-1, 5))
    scaled: NDArray[Any] = scaler.transform(x.reshape(-1, 5))
    assert scaled.shape == (x.size // 5, 5)


def threads(x: NDArray[np.float32]) -> None:
    previous: int = fastnorm.get_num_threads()
    with fastnorm.threads(1):
        fastnorm.layer_norm(x, 5)
        assert fastnorm.get_num_threads() == 1
    fastnorm.set_num_threads(None)
    cache: Optional[int] = fastnorm.set_output_cache(None)
    fastnorm.set_output_cache(cache)
    assert previous >= 1


def dask_moments(x: NDArray[np.float32]) -> None:
    import dask.array as da

    import fastnorm.dask

    # dask's own annotations are partial (from_array returns Unknown to pyright): say what it returns
    chunked = cast(da.Array, da.from_array(x, chunks="auto"))  # pyright: ignore[reportUnknownMemberType]
    mean, var = fastnorm.dask.moments(chunked, axes=(0, 2, 3))
    assert np.allclose(np.asarray(mean), x.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert var.shape == (3,)


def main() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    layers(x)
    functions(x)
    split_batch_steps(x)
    statistics(x)
    threads(x)
    if importlib.util.find_spec("dask") is not None:
        dask_moments(x)


if __name__ == "__main__":
    main()
