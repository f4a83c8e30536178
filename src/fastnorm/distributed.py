"""Statistics of batches larger than one process: SyncBatchNorm over MPI, exact population statistics.

Both rest on :class:`fastnorm.Moments`: per-channel (count, mean, M2) partials merged with Chan's formula,
in the same order everywhere, so that every process ends with the same statistics.  mpi4py is imported
only when a SyncBatchNorm without an explicit communicator first needs one (``pip install fastnorm[mpi]``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from . import functional as F
from ._threads import threads_for
from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, no_grad
from .statistics import Moments

__all__ = ["SyncBatchNorm", "calibrate_batch_norms"]


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over a batch split across MPI processes, as ``torch.nn.SyncBatchNorm``.

    In training mode each process computes the moments of its slice, the processes all-gather them and
    merge them in rank order (so every process holds the same global statistics), and each normalizes
    its slice with them; the running statistics are updated identically on every process.  Backward
    all-gathers the per-channel ``sum(dy)`` and ``sum(dy * xhat)`` the same way; ``grad_weight`` and
    ``grad_bias`` are then the gradients of the whole batch, equal on every process (no further
    all-reduce is needed for them).  Slices may differ in size and may be empty.  Evaluation mode uses
    the running statistics and does not communicate.

    Every process must call forward (and backward) collectively, in the same order.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, dtype, channel_axis, bessel
        As :class:`fastnorm.BatchNorm2d`; any input of 2 to 5 dimensions.
    comm : mpi4py communicator, keyword-only, optional
        Default: ``MPI.COMM_WORLD``.  Anything with mpi4py's ``allgather(obj)`` works.
    """

    _input_ndims = (2, 3, 4, 5)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 comm=None, dtype=np.float32, channel_axis=1, bessel=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype,
                         channel_axis=channel_axis, bessel=bessel)
        self.comm = comm

    def __getstate__(self):
        state = super().__getstate__()
        state["comm"] = None  # a communicator belongs to its process
        return state

    @property
    def communicator(self):
        if self.comm is None:
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
        return self.comm

    def _allgather_sum(self, local, merge):
        """Fold the all-gathered values of every process, in rank order."""
        parts = self.communicator.allgather(local)
        total = parts[0]
        for part in parts[1:]:
            total = merge(total, part)
        return total

    def forward(self, x: ArrayLike, *, out=None) -> NDArray:
        if not (self.training or self.running_mean is None):
            return super().forward(x, out=out)
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        self._check_input(x)
        x, dtype = F._as_input(x, "input")
        axis = F._check_axis(self.channel_axis, x.ndim, "channel_axis")
        C = x.shape[axis]
        if C != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels on axis {axis}, got input of shape {x.shape}")
        _, _, w, b = F._channel_params(x, C, None, None, self.weight, self.bias)
        if out is not None:
            F._check_out(out, x.shape, dtype)
        buf, N, C, S, moved = F._channel_view(x, axis)
        nthreads = threads_for(x.size)
        if N * S:
            mean, var = _kernels.moments(buf, N, C, S, nthreads)
            local = Moments(N * S, mean, var * (N * S))
        else:
            local = Moments.empty(C)
        if self._recorder is not None:  # calibrate_batch_norms: merged across processes at the end
            self._recorder[0] = local if self._recorder[0] is None else self._recorder[0] + local
            self._recorder[1] += 1
        total = self._allgather_sum(local, Moments.merge)
        count = float(total.count[0])
        if count <= 1:
            raise ValueError("input: expected more than 1 value per channel when training, got "
                             f"{count:g} over all processes")
        mean, var = total.mean, total.m2 / count
        saved = self._input_to_keep(x, out)
        result = F._result_buffer(out, buf, axis, moved)
        if N * S:
            _kernels.normalize(buf, result, N, C, S, mean, var, w, b, self.eps, nthreads)
        y = F._finish(result, out, axis, moved, dtype)
        if self.training and self.track_running_stats:
            factor = self.momentum if self.momentum is not None else 1.0 / (self.num_batches_tracked + 1)
            F._update_running(self.running_mean, self.running_var, mean, var, factor,
                              count / (count - 1) if self.bessel else 1.0)
            self.num_batches_tracked += 1
        self._keep(saved, mean, 1.0 / np.sqrt(var + self.eps), True, count)
        return y

    def _backward(self, grad_output, x, mean, invstd, batch_stats, count=None):
        if count is None:  # evaluation mode: a local BatchNorm
            return super()._backward(grad_output, x, mean, invstd, batch_stats)
        x, g, dtype = F._grad_inputs(grad_output, x)
        axis = F._check_axis(self.channel_axis, x.ndim, "channel_axis")
        buf, N, C, S, moved = F._channel_view(x, axis)
        gbuf = np.ascontiguousarray(np.moveaxis(g, axis, -1) if moved else g)
        nthreads = threads_for(x.size)
        local = np.stack(_kernels.grad_sums(buf, gbuf, N, C, S, mean, invstd, nthreads)) if N * S else np.zeros((2, C))
        sum_dy, sum_dyx = self._allgather_sum(local, np.add)
        dx = _kernels.empty_like(buf)
        if N * S:
            w = None if self.weight is None else np.ascontiguousarray(self.weight)
            _kernels.grad_apply(buf, gbuf, dx, N, C, S, mean, invstd, w, np.ascontiguousarray(sum_dy),
                                np.ascontiguousarray(sum_dyx), count, nthreads)
        return F._finish(dx, None, axis, moved, dtype), sum_dyx, sum_dy

    def _set_population_stats(self, moments, calls):
        # Exact statistics of the inputs of every process (calibrate, calibrate_batch_norms).
        super()._set_population_stats(self._allgather_sum(moments, Moments.merge), calls)

    @classmethod
    def convert(cls, layers, comm=None):
        """SyncBatchNorm twins of BatchNorm layers: a layer, or a dict or list of layers (other layers are
        returned as they are), with the same configuration, parameters, buffers and mode."""
        if isinstance(layers, dict):
            return {name: cls.convert(layer, comm) for name, layer in layers.items()}
        if isinstance(layers, (list, tuple)):
            return type(layers)(cls.convert(layer, comm) for layer in layers)
        if not isinstance(layers, (BatchNorm1d, BatchNorm2d, BatchNorm3d)):
            return layers
        twin = cls(comm=comm, **layers._config())
        twin.load_state_dict(layers.state_dict())
        return twin.train(layers.training)


def calibrate_batch_norms(layers, forward: Callable, batches: Iterable) -> None:
    """Exact population statistics ("precise BN") for the BatchNorm layers of a model.

    ``forward(batch)`` runs the model on one batch.  During the pass the layers run in training mode and
    each records the exact moments of every input it sees; at the end each layer's running mean and
    variance are set to the mean and (unbiased, or biased with ``bessel=False``) variance over all those
    inputs, instead of an exponential average, and ``num_batches_tracked`` to the number of batches.
    The layers return to their modes afterwards.

    Parameters
    ----------
    layers : iterable or dict of BatchNorm layers
    forward : callable
    batches : iterable
    """
    layers = list(layers.values()) if isinstance(layers, dict) else list(layers)
    for k, layer in enumerate(layers):
        if not isinstance(layer, _BatchNorm) or layer.running_mean is None:
            raise TypeError(f"layers[{k}]: expected a BatchNorm layer with running statistics")
    modes = [layer.training for layer in layers]
    for layer in layers:
        layer._recorder = [None, 0]
        layer.train(True)
    saved = [(layer.running_mean.copy(), layer.running_var.copy(), layer.num_batches_tracked) for layer in layers]
    try:
        with no_grad():
            for batch in batches:
                forward(batch)
        recorded = [layer._recorder for layer in layers]
    finally:
        for layer, mode, (rm, rv, n) in zip(layers, modes, saved):
            del layer._recorder
            layer.train(mode)
            layer.running_mean[...], layer.running_var[...], layer.num_batches_tracked = rm, rv, n
    for k, (layer, (moments, calls)) in enumerate(zip(layers, recorded)):
        if moments is None:
            raise ValueError(f"layers[{k}]: received no input during the calibration pass")
        layer._set_population_stats(moments, calls)
