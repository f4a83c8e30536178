"""Statistics of batches larger than one process: SyncBatchNorm over MPI, exact population statistics.

Both rest on per-channel (count, mean, variance) partials merged with Chan's formula (:class:`fastnorm.Moments`),
in the same order everywhere, so that every process ends with the same statistics.  SyncBatchNorm's training
step is PyTorch's, on the public functions of ``fastnorm.functional`` (``batch_norm_stats``,
``batch_norm_gather_stats_with_counts``, ``batch_norm_elemt``, ``batch_norm_backward_reduce``,
``batch_norm_backward_elemt``) with one exchange between them; this module adds the exchange, its failure
handling, and the layer's state, applied whole with the output (see ``_kernels.Commit``).  mpi4py is imported
only when a SyncBatchNorm without an explicit communicator first needs one (``pip install fastnorm[mpi]``).
"""
from __future__ import annotations

import functools
import numbers
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Tuple, TypeVar, Union, cast,
                    overload)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import functional as F
from ._batch_norm_steps import _variance
from ._plan import _new_result
from ._epilogue import _pre_activation, _through_activation
from ._validation import _as_input, _channel_params, _check_activation, _check_add, _check_axis, _check_eps, _check_out
from .layers import (_BATCH_NORM_ATTRIBUTES, _BATCH_NORM_MATH, _BATCH_NORM_PARAMETERS, _BatchNorm, _fill, _Grads,
                     _lazy_hint, _references, _running_stats, no_grad)
from .statistics import Moments

__all__ = ["SyncBatchNorm", "calibrate_batch_norms", "Communicator"]

_Context = TypeVar("_Context")
_Tree = TypeVar("_Tree")
_Key = TypeVar("_Key")
_Batch = TypeVar("_Batch")


class Communicator(Protocol):
    """What :class:`SyncBatchNorm` needs of a communicator: mpi4py's ``Comm`` has it.

    ``Allgather(sendbuf, recvbuf)`` gathers every process's float64 or uint8 ``sendbuf`` (a 1-D ndarray)
    into the rows of ``recvbuf`` (an ndarray of shape ``(processes, sendbuf.size)``), in rank order.
    """

    def Get_size(self) -> int:
        """The number of processes."""
        ...

    def Allgather(self, sendbuf: Any, recvbuf: Any, /) -> None:
        """Gather every process's ``sendbuf`` into the rows of ``recvbuf``."""
        ...


# The types an error on one process is raised as on the others; any other is a RuntimeError naming it.
_ERROR_TYPES = {cls.__name__: cls for cls in (ValueError, TypeError, RuntimeError, MemoryError)}
# BatchNorm's arguments that SyncBatchNorm does not take: renorm and ghost batches are per-process ideas here.
_UNSYNCED = ("renorm", "renorm_clipping", "renorm_momentum", "virtual_batch_size")
_MESSAGE_BYTES = 4096  # at most, of an error message sent to the other processes


def _allgather(comm: Communicator, width: int, local: Callable[[], Tuple[ArrayLike, _Context]]
               ) -> Tuple[NDArray[np.float64], _Context]:
    """All-gather this process's share of a collective step with mpi4py's buffer ``Allgather`` (no pickling).

    ``local()`` runs the process's part (its checks and partial sums) and returns ``(values, context)``:
    a float64 vector of ``width`` values to send and whatever the rest of the step needs.  Returns
    ``(rows, context)``, ``rows`` the ``(processes, width)`` values of every process in rank order.

    Whatever ``local()`` raises is sent in the same exchange in place of the values (a status leads each
    row), so the step ends on every process: a process whose ``local()`` raised raises that error, and the
    others raise one of the same type with the message of the first process that failed and its rank.
    Only then is there a second exchange, of the messages.
    """
    send = np.zeros(width + 1)  # [status, values]: status 0, or 1 + the length of the error message
    error: Optional[BaseException] = None
    context: Optional[_Context] = None
    message = b""
    try:
        values, context = local()
        send[1:] = values
    except BaseException as exc:  # a KeyboardInterrupt too: the others must not be left waiting
        error = exc
        message = f"{type(exc).__name__}: {exc}".encode()[:_MESSAGE_BYTES]
        send[0] = 1 + len(message)
    rows = np.empty((comm.Get_size(), width + 1))
    comm.Allgather(send, rows)
    status = rows[:, 0]
    if not status.any():
        return rows[:, 1:], cast(_Context, context)  # local() returned on this process too
    mine = np.zeros(max(int(status.max()) - 1, 1), np.uint8)
    if error is not None:
        mine[:len(message)] = np.frombuffer(message, np.uint8)
    texts = np.empty((len(status), mine.size), np.uint8)
    comm.Allgather(mine, texts)
    if error is not None:
        raise error
    first = int(np.flatnonzero(status)[0])
    name, _, text = texts[first, :int(status[first]) - 1].tobytes().decode(errors="replace").partition(": ")
    if name not in _ERROR_TYPES:
        name, text = "RuntimeError", f"{name}: {text}"
    raise _ERROR_TYPES[name](f"{text} (raised on process {first})")


_MOMENT_KEYS = ("count", "mean", "var")  # Moments.to_arrays: the variance, finite where m2 may not be


def _moments_to_row(moments: Moments) -> NDArray[np.float64]:
    arrays = moments.to_arrays()
    return np.concatenate([arrays[key] for key in _MOMENT_KEYS])


def _merged_moments(rows: NDArray[np.float64]) -> Moments:
    """The moments of every process (rows of ``_moments_to_row``), merged in rank order."""
    return functools.reduce(Moments.merge, (Moments.from_arrays(dict(zip(_MOMENT_KEYS, np.split(row, 3))))
                                            for row in rows))


class SyncBatchNorm(_BatchNorm):
    __doc__ = _fill(r"""Batch normalization over a batch split across MPI processes, as ``torch.nn.SyncBatchNorm``.

    It runs PyTorch's steps, each a function of :mod:`fastnorm.functional`.  In training mode each
    process computes the statistics of its slice (:func:`~fastnorm.functional.batch_norm_stats`), the
    processes all-gather them with their counts and merge them in rank order
    (:func:`~fastnorm.functional.batch_norm_gather_stats_with_counts`, so every process holds the same
    global statistics), and each normalizes its slice with them
    (:func:`~fastnorm.functional.batch_norm_elemt`); the running statistics are updated identically on
    every process.  Backward all-gathers the per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``
    (:func:`~fastnorm.functional.batch_norm_backward_reduce`) the same way and computes the input
    gradient from their totals (:func:`~fastnorm.functional.batch_norm_backward_elemt`); ``grad_weight``
    and ``grad_bias`` are then the gradients of the whole batch, equal on every process (no further
    all-reduce is needed for them).  Each step is one buffer ``Allgather`` of ``2 * C + 2`` (forward) or
    ``2 * C + 1`` (backward) float64 values per process (a status first).

    Slices may differ in size and may be empty; a batch empty on every process gives an empty output and
    updates nothing, as :class:`BatchNorm2d` on an empty batch.  Evaluation mode never communicates: it
    uses the running statistics, or the local batch's statistics with ``track_running_stats=False`` (as
    PyTorch), and so does the backward of an evaluation-mode forward.

    Every process must call a training-mode forward (and its backward), :meth:`calibrate` and
    :func:`calibrate_batch_norms` collectively, in the same order, with the layer configured the same.
    Such a call ends on every process, failing or not: when the checks or the computation fail on one
    process (an input with the wrong number of channels or dtype, a ``grad_output`` of the wrong shape, a
    backward with no training-mode forward kept), the error travels in the same exchange, every process
    raises it and none changes its state.  A backward with no forward kept communicates when the layer
    is in training mode, so that it fails together with the processes waiting in their backward.
""" + _BATCH_NORM_PARAMETERS + r"""
    comm : Communicator, keyword-only, optional
        An mpi4py communicator (default: ``MPI.COMM_WORLD``, mpi4py imported when first needed), or
        anything with its ``Get_size()`` and buffer ``Allgather(sendbuf, recvbuf)`` of NumPy arrays
        (:class:`fastnorm.distributed.Communicator`).
    channel_axis : int, keyword-only
        1 (channels first, the default) or -1 (channels last).
    bessel : bool, keyword-only
        Update the running variance with the unbiased (True, PyTorch) or biased (False, ONNX/Keras) batch
        variance of the whole batch.

    Shape
    -----
    input : (N, C, \*), 2 to 5 dimensions
        This process's slice of the batch (N may differ between processes, and be 0); float16, float32
        or float64.  ``channel_axis=-1``: (N, \*, C).
    output : the input's shape and dtype
""" + _BATCH_NORM_ATTRIBUTES + """
    comm : Communicator or None
        The communicator given, or the default once used; None in a copy or unpickled layer (a
        communicator belongs to its process) until it is used.

    Raises
    ------
    ValueError, TypeError, RuntimeError
        On every process, when a collective call fails on any: the failing process raises its own error;
        the others raise one of the same type, with that message and "(raised on process r)".  One value
        per channel in the whole batch is the usual ``ValueError`` ("expected more than 1 value per
        channel when training"), on every process.

    Notes
    -----""" + _BATCH_NORM_MATH + """  The mean and variance here are those of the
    whole batch, over every process.
""" + _references("batch", "torch.nn.SyncBatchNorm") + """
    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> from mpi4py import MPI
    >>> bn = fastnorm.SyncBatchNorm(3, comm=MPI.COMM_SELF)   # COMM_WORLD under mpiexec
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, (8, 3, 4)).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-5), bn.num_batches_tracked
    (True, 1)
    >>> dx = bn.backward(np.ones_like(y))
    >>> bn.grad_bias
    array([32., 32., 32.], dtype=float32)
""")

    _input_ndims = (2, 3, 4, 5)
    comm: Optional[Communicator]
    channel_axis: int  # one axis (checked by the constructor)
    num_features: int

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, comm: Optional[Communicator] = None, bias: bool = True,
                 dtype: DTypeLike = np.float32, channel_axis: int = 1, bessel: bool = True,
                 activation: Optional[str] = None) -> None:
        if not isinstance(channel_axis, numbers.Integral):  # its exchanges are per channel of one axis
            raise TypeError(f"channel_axis: expected an integer axis (SyncBatchNorm has one channel axis), got "
                            f"{channel_axis!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias, dtype=dtype,
                         channel_axis=channel_axis, bessel=bessel, activation=activation)
        self.comm = comm

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        for key in _UNSYNCED:
            del config[key]
        return config

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["comm"] = None  # a communicator belongs to its process
        return state

    @property
    def communicator(self) -> Communicator:
        """``comm``, or ``MPI.COMM_WORLD`` (then kept in ``comm``) when it is None."""
        if self.comm is None:
            from mpi4py import MPI

            self.comm = MPI.COMM_WORLD
        return self.comm

    def _forward(self, x: Any, out: Optional[NDArray[Any]], add: Optional[ArrayLike],
                 mask: Optional[ArrayLike]) -> NDArray[Any]:
        if not self.training:
            return super()._forward(x, out, add, mask)
        if mask is not None:
            raise ValueError("mask: not supported by SyncBatchNorm in training mode (only in evaluation mode)")
        C = self.num_features
        rows, (x_, saved, local, target) = _allgather(self.communicator, 2 * C + 1,
                                                      lambda: self._forward_local(x, out, add))
        counts = rows[:, 2 * C]
        count = float(counts.sum())
        if count == 1:  # known to every process alike
            raise ValueError("input: expected more than 1 value per channel when training, got 1 over all "
                             "processes")
        # The running statistics are left to the commit below (momentum unused here): updated with the output
        mean, invstd = F.batch_norm_gather_stats_with_counts(x_, rows[:, :C], rows[:, C:2 * C], None, None, 0.0,
                                                             self.eps, counts)  # NaN for a batch empty everywhere
        # What the call changes besides its output, applied by the kernel call that writes it (see
        # _kernels.Commit): an interrupt or a failure leaves all of it or none.
        state: Dict[str, Any] = {}
        running = None
        if self._recorder is not None:  # calibrate_batch_norms: merged across processes at the end
            state["_recorder"] = [local if self._recorder[0] is None else self._recorder[0] + local,
                                  self._recorder[1] + 1]
        if (self.track_running_stats and count > 0 and self.running_mean is not None
                and self.running_var is not None and self.num_batches_tracked is not None):
            factor = self.momentum if self.momentum is not None else 1.0 / (self.num_batches_tracked + 1)
            running = (self.running_mean, self.running_var, factor, count / (count - 1) if self.bessel else 1.0)
            state["num_batches_tracked"] = self.num_batches_tracked + 1
        commit = self._commit(state, (saved, mean, invstd, True, count), add)
        return F._batch_norm_elemt(x_, self.weight, self.bias, mean, invstd, self.eps, self.channel_axis, target,
                                   commit, running, _check_activation(self.activation), add)

    _forward_parts = (  # of forward's docstring: see _AddLayer
        "Normalize ``x``, this process's slice of the batch: with the statistics of the whole batch in\n"
        "        training mode (a collective call), as :class:`BatchNorm2d` in evaluation mode (no communication).",
        "float16, bfloat16, float32 or float64 of 2 to 5 dimensions, C channels on ``channel_axis``; may be\n"
        "            empty on some processes.",
        "TypeError, ValueError\n"
        "            As :meth:`BatchNorm2d.forward`, for this process's arguments; in training mode on every\n"
        "            process when any process's fail (see the class's Raises).",
        ">>> import numpy as np, fastnorm\n"
        "        >>> from mpi4py import MPI\n"
        "        >>> bn = fastnorm.SyncBatchNorm(2, comm=MPI.COMM_SELF)\n"
        "        >>> bn.forward(np.array([[1., 2.], [3., 6.]], np.float32)).round(4)\n"
        "        array([[-1., -1.],\n"
        "               [ 1.,  1.]], dtype=float32)")
    _forward_result = "slice"

    def _forward_local(self, input: ArrayLike, out: Optional[NDArray[Any]], add: Optional[ArrayLike]
                       ) -> Tuple[NDArray[np.float64], Tuple[NDArray[Any], Any, Moments, NDArray[Any]]]:
        """This process's share of a training forward: the checks of everything the rest of the step
        uses, then ``batch_norm_stats`` of its slice, and the memory of the output (taken before the
        exchange, so that little can fail after it).  Returns the row it sends (mean, invstd, count) and
        (the input, the input backward keeps, its moments, the array the output goes to)."""
        given = input if isinstance(input, np.ndarray) else np.asarray(input)
        self._check_input(given)
        x, dtype = _as_input(given, "input", half=True)  # half precision: the sweep reads it
        eps = _check_eps(self.eps, training=True)
        axis = _check_axis(self.channel_axis, x.ndim, "channel_axis")
        C = x.shape[axis]
        if C != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels on axis {axis}, "
                             f"got input of shape {x.shape}")
        tracking = self.training and self.track_running_stats
        _channel_params(x, C, self.running_mean if tracking else None, self.running_var if tracking else None,
                        self.weight, self.bias)
        if out is not None:
            _check_out(out, x.shape, dtype)
        _check_activation(self.activation)
        _check_add(add, x.shape)
        mean, invstd = F.batch_norm_stats(x, eps, channel_axis=axis)
        n = x.size // C
        local = Moments.from_arrays({"count": n, "mean": mean, "var": _variance(invstd, eps)})
        target = out if out is not None else _new_result(x, axis, dtype)
        return np.concatenate([mean, invstd, [n]]), (x, self._input_to_keep(x, out), local, target)

    def backward(self, grad_output: ArrayLike) -> NDArray[Any]:
        """As :meth:`BatchNorm2d.backward`; after a training-mode forward, a collective call (see above).

        Parameters
        ----------
        grad_output : array_like
            The gradient of the loss with respect to this process's output: its shape, floating point.

        Returns
        -------
        ndarray
            The gradient with respect to this process's input.  ``grad_weight`` and ``grad_bias`` are
            those of the whole batch, the same on every process.

        Raises
        ------
        RuntimeError
            No forward to differentiate (on every process when the layer is in training mode).
        ValueError, TypeError
            ``grad_output`` of another shape, or not floating point; after a training-mode forward on
            every process when any process's fails.

        Examples
        --------
        >>> import numpy as np, fastnorm
        >>> from mpi4py import MPI
        >>> bn = fastnorm.SyncBatchNorm(2, comm=MPI.COMM_SELF)
        >>> y = bn(np.array([[1., 2.], [3., 6.]], np.float32))
        >>> dx = bn.backward(np.array([[1., 0.], [0., 2.]], np.float32))
        >>> bn.grad_bias
        array([1., 2.], dtype=float32)
        """
        if self._saved is None and self.training:
            # The other processes may be waiting in the exchange of their backward: fail there with them.
            def fail() -> Tuple[NDArray[np.float64], None]:
                _BatchNorm.backward(self, grad_output)  # raises: there is no forward
                return np.zeros(2 * self.num_features), None

            _allgather(self.communicator, 2 * self.num_features, fail)
        return super().backward(grad_output)

    def _backward(self, grad_output: ArrayLike, *saved: Any) -> Tuple[Any, ...]:
        if len(saved) == 4:  # after an evaluation-mode forward: a local BatchNorm
            return super()._backward(grad_output, *saved)
        x, mean, invstd, _, count = saved
        axis = self.channel_axis
        activation, add, _ = self._saved_epilogue
        # Through the activation first: the collective steps below then differentiate the normalization.
        return _through_activation(
            grad_output, x, activation, add,
            lambda x: _pre_activation(x, (axis % x.ndim,), (axis % x.ndim,), mean, invstd, self.weight, self.bias),
            lambda dz: self._backward_batch(dz, x, mean, invstd, count))

    def _backward_batch(self, grad_output: ArrayLike, x: NDArray[Any], mean: NDArray[np.float64],
                        invstd: NDArray[np.float64], count: float) -> _Grads:
        """The training-mode backward of the normalization (collective: the sums of every process)."""
        axis = self.channel_axis

        def local() -> Tuple[NDArray[np.float64], None]:
            sum_dy, sum_dy_xmu, _, _ = F.batch_norm_backward_reduce(grad_output, x, mean, invstd, self.weight, True,
                                                                    False, False, channel_axis=axis)
            return np.concatenate([sum_dy, sum_dy_xmu]), None

        rows, _ = _allgather(self.communicator, 2 * self.num_features, local)
        sum_dy, sum_dy_xmu = np.split(rows.sum(axis=0), 2)
        dx = F.batch_norm_backward_elemt(grad_output, x, mean, invstd, self.weight, sum_dy, sum_dy_xmu, count,
                                         channel_axis=axis)
        return dx, sum_dy_xmu * invstd if count else np.zeros(self.num_features), sum_dy  # (invstd NaN then)

    def _population_stats(self, local: Callable[[], Tuple[Moments, int]]
                          ) -> Tuple[NDArray[Any], NDArray[Any], int]:
        # Exact statistics of the inputs of every process (calibrate, calibrate_batch_norms).
        def share() -> Tuple[NDArray[np.float64], int]:
            moments, calls = local()
            return _moments_to_row(moments), calls

        rows, calls = _allgather(self.communicator, 3 * self.num_features, share)
        return super()._population_stats(lambda: (_merged_moments(rows), calls))

    @overload
    @classmethod
    def convert(cls, layers: _BatchNorm, comm: Optional[Communicator] = None) -> SyncBatchNorm: ...
    @overload
    @classmethod
    def convert(cls, layers: Dict[_Key, Any], comm: Optional[Communicator] = None) -> Dict[_Key, Any]: ...
    @overload
    @classmethod
    def convert(cls, layers: List[Any], comm: Optional[Communicator] = None) -> List[Any]: ...
    @overload
    @classmethod
    def convert(cls, layers: Tuple[Any, ...], comm: Optional[Communicator] = None) -> Tuple[Any, ...]: ...
    @overload
    @classmethod
    def convert(cls, layers: _Tree, comm: Optional[Communicator] = None) -> _Tree: ...

    @classmethod
    def convert(cls, layers: Any, comm: Optional[Communicator] = None) -> Any:
        """SyncBatchNorm twins of BatchNorm layers, with the same configuration, parameters, buffers and
        mode (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``).

        Parameters
        ----------
        layers : layer, or dict, list or tuple of layers (nested)
            BatchNorm1d, BatchNorm2d and BatchNorm3d layers, and the Lazy ones once sized (called or given
            a state dict), are converted, ``activation`` and the other constructor arguments kept; other
            layers and values are returned as they are.
        comm : Communicator, optional
            The twins' ``comm``.

        Returns
        -------
        SyncBatchNorm, or dict, list or tuple of the same structure
            New containers; the layers not converted are the same objects.

        Raises
        ------
        ValueError
            A dict, list or tuple that contains itself; a layer with ``renorm`` or ``virtual_batch_size``; a
            Lazy layer not sized yet.

        Examples
        --------
        >>> import fastnorm
        >>> fastnorm.SyncBatchNorm.convert({"bn": fastnorm.BatchNorm2d(4).eval(), "ln": fastnorm.LayerNorm(4)})
        {'bn': SyncBatchNorm(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True),
         'ln': LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)}
        """
        return cls._convert(layers, comm, ())

    @classmethod
    def _convert(cls, layers: Any, comm: Optional[Communicator], enclosing: Tuple[Any, ...]) -> Any:
        if isinstance(layers, (dict, list, tuple)):
            if any(layers is outer for outer in enclosing):
                raise ValueError(f"layers: a {type(layers).__name__} that contains itself; expected a tree of "
                                 "layers")
            enclosing += (layers,)
            if isinstance(layers, dict):
                return {name: cls._convert(layer, comm, enclosing) for name, layer in layers.items()}
            return type(layers)(cls._convert(layer, comm, enclosing) for layer in layers)
        if not isinstance(layers, _BatchNorm) or isinstance(layers, SyncBatchNorm):
            return layers
        if layers.num_features == 0:  # a lazy layer not sized yet: left local, its model would not be synced
            raise ValueError(f"layers: a {type(layers).__name__} whose num_features is not known yet; call it or "
                             "load a state dict before converting (SyncBatchNorm is not lazy)")
        if layers.renorm or layers.virtual_batch_size is not None:
            raise ValueError(f"layers: a {type(layers).__name__} with renorm={layers.renorm}, virtual_batch_size="
                             f"{layers.virtual_batch_size}: SyncBatchNorm supports neither renorm nor ghost batches")
        config = dict(layers._config(), num_features=layers.num_features)  # a lazy layer's config lacks it
        twin = cls(comm=comm, **{k: v for k, v in config.items() if k not in _UNSYNCED})
        twin.load_state_dict(layers.state_dict())
        return twin.train(layers.training)


def calibrate_batch_norms(layers: Union[Mapping[str, _BatchNorm], Iterable[_BatchNorm]],
                          forward: Callable[[_Batch], object], batches: Iterable[_Batch]) -> None:
    """Exact population statistics ("precise BN") for the BatchNorm layers of a model.

    ``forward(batch)`` runs the model on one batch.  During the pass the layers run in training mode and
    each records the exact moments of every input it sees; at the end each layer's running mean and
    variance are set to the mean and (unbiased, or biased with ``bessel=False``) variance over all those
    inputs, instead of an exponential average, and ``num_batches_tracked`` to the number of batches.
    The layers return to their modes afterwards.  Either every layer is set or, when the call raises,
    none is.  Nothing is kept for ``backward`` (the pass runs under :func:`fastnorm.no_grad`).

    With SyncBatchNorm layers the call is collective: every process calls it with its own batches (as
    many on each, since each forward is collective) and the statistics are those of the inputs of every
    process.  A failure of the final step on any process (a layer that received no input) raises on every
    process, as a failing SyncBatchNorm call does; an error raised by ``forward``'s own code is not seen by
    the other processes.

    Parameters
    ----------
    layers : mapping or iterable of BatchNorm layers
        BatchNorm1d, BatchNorm2d, BatchNorm3d or SyncBatchNorm layers with running statistics, each
        listed once (a mapping's values are the layers).
    forward : callable
        ``forward(batch)`` runs the model on one batch; what it returns is ignored.
    batches : iterable
        The calibration batches, each passed to ``forward``.

    Raises
    ------
    TypeError
        A layer that is not a BatchNorm with running statistics.
    ValueError
        A layer listed twice, a layer that received no input, or no more than one value per channel
        (with ``bessel=False``: none) in all.

    Notes
    -----
    The running statistics become the population statistics of the calibration data, as in "precise BN"
    (Wu, Y. and Johnson, J. (2021). Rethinking "batch" in BatchNorm. https://arxiv.org/abs/2105.07576),
    merged exactly with Chan, Golub and LeVeque's formula, in float64.

    Examples
    --------
    >>> import numpy as np, fastnorm
    >>> bn = fastnorm.BatchNorm1d(1, dtype=np.float64)
    >>> fastnorm.calibrate_batch_norms([bn], bn, [np.array([[1.], [2.], [3.]]), np.array([[4.], [5.]])])
    >>> bn.running_mean, bn.running_var, bn.num_batches_tracked    # of 1, 2, 3, 4, 5 (unbiased variance)
    (array([3.]), array([2.5]), 2)
    """
    listed = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
    for k, layer in enumerate(listed):
        if not isinstance(layer, _BatchNorm) or layer.running_mean is None:
            raise TypeError(f"layers[{k}]: expected a BatchNorm layer with running statistics{_lazy_hint(layer)}")
        if any(other is layer for other in listed[:k]):
            raise ValueError(f"layers[{k}]: the same layer is listed twice")
    modes = [layer.training for layer in listed]
    for layer in listed:
        layer._recorder = [None, 0]
        layer.train(True)
    saved = []
    for layer in listed:
        rm, rv = _running_stats(layer)
        saved.append((rm.copy(), rv.copy(), layer.num_batches_tracked))
    try:
        with no_grad():
            for batch in batches:
                forward(batch)
        recorded = [layer._recorder for layer in listed]
    finally:
        for layer, mode, (rm, rv, n) in zip(listed, modes, saved):
            del layer._recorder
            layer.train(mode)
            running_mean, running_var = _running_stats(layer)
            running_mean[...], running_var[...], layer.num_batches_tracked = rm, rv, n
    # Every layer's statistics before any is set.  A SyncBatchNorm exchanges its moments whatever failed
    # before it, carrying that error, so that the other processes fail too instead of waiting for it.
    error: Optional[Exception] = None
    stats = []
    for k, (layer, record) in enumerate(zip(listed, recorded)):
        assert record is not None  # set above for every layer
        moments, calls = record

        def local(k: int = k, moments: Optional[Moments] = moments, calls: int = calls) -> Tuple[Moments, int]:
            if error is not None:
                raise error
            if moments is None:
                raise ValueError(f"layers[{k}]: received no input during the calibration pass")
            return moments, calls

        try:
            stats.append(layer._population_stats(local))
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
    for layer, (mean, var, calls) in zip(listed, stats):
        layer._set_running_stats(mean, var, calls)
