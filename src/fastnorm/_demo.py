"""``python -m fastnorm demo``: train a small NumPy network with fastnorm's BatchNorm1d.

A 3-layer MLP (Linear -> BatchNorm1d -> ReLU, twice, then Linear) learns a 3-class spiral (synthetic, no
download) with SGD, momentum and a cosine learning-rate decay.  Each epoch prints the training loss, and how
far the BatchNorm running
statistics are from the exact statistics of the whole training set (they converge); at the end, eval
mode (running statistics) on held-out data reaches the accuracy training reached.  It runs on one thread
(see ``one_thread``) and takes a few seconds.
"""
import contextlib
import sys
import time
from typing import Any, Dict, Iterator, List, TextIO, Tuple, Union

import numpy as np
from numpy.typing import NDArray

from . import BatchNorm1d, no_grad, threads

Array = NDArray[Any]


def spiral(n_per_class: int, classes: int = 3, noise: float = 0.2, seed: int = 0
           ) -> Tuple[NDArray[np.float32], NDArray[np.int_]]:
    """Points on `classes` interleaved spiral arms, with labels."""
    rng = np.random.default_rng(seed)
    t = np.tile(np.linspace(0.0, 1.0, n_per_class), classes)
    labels = np.repeat(np.arange(classes), n_per_class)
    angle = 4.0 * t + labels * (2.0 * np.pi / classes) + rng.normal(scale=noise, size=t.size)
    points = np.stack([t * np.sin(angle), t * np.cos(angle)], axis=1)
    # A large offset and scale on the inputs: BatchNorm makes the network indifferent to them.
    points = points * 50.0 + 1000.0
    order = rng.permutation(t.size)
    return points[order].astype(np.float32), labels[order]


class Linear:
    def __init__(self, fan_in: int, fan_out: int, rng: np.random.Generator) -> None:
        self.weight = (rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        self.bias = np.zeros(fan_out, np.float32)
        self.x = self.grad_weight = self.grad_bias = np.zeros(0, np.float32)

    def __call__(self, x: Array) -> Array:
        self.x = x
        y: Array = x @ self.weight + self.bias
        return y

    def backward(self, grad: Array) -> Array:
        self.grad_weight = self.x.T @ grad
        self.grad_bias = grad.sum(axis=0)
        dx: Array = grad @ self.weight.T
        return dx


class ReLU:
    def __init__(self) -> None:
        self.mask = np.zeros(0, bool)

    def __call__(self, x: Array) -> Array:
        self.mask = x > 0
        y: Array = x * self.mask
        return y

    def backward(self, grad: Array) -> Array:
        dx: Array = grad * self.mask
        return dx


class MLP:
    def __init__(self, hidden: int = 64, classes: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.layers: List[Union[Linear, BatchNorm1d, ReLU]] = [
            Linear(2, hidden, rng), BatchNorm1d(hidden), ReLU(),
            Linear(hidden, hidden, rng), BatchNorm1d(hidden), ReLU(),
            Linear(hidden, classes, rng)]

    @property
    def norms(self) -> List[BatchNorm1d]:
        return [layer for layer in self.layers if isinstance(layer, BatchNorm1d)]

    def train(self, mode: bool = True) -> None:
        for norm in self.norms:
            norm.train(mode)

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, grad: Array) -> None:
        for layer in reversed(self.layers):
            grad = layer.backward(grad)

    def parameters(self) -> Iterator[Tuple[Array, Array]]:
        """(array, gradient) pairs of every trainable parameter."""
        for layer in self.layers:
            if isinstance(layer, (Linear, BatchNorm1d)):
                for param, grad in ((layer.weight, layer.grad_weight), (layer.bias, layer.grad_bias)):
                    if param is None or grad is None:
                        raise RuntimeError("parameters: call backward first")
                    yield param, grad

    def norm_inputs(self, x: Array) -> List[Array]:
        """The input of each BatchNorm layer for x, in eval mode."""
        inputs = []
        with no_grad():
            for layer in self.layers:
                if isinstance(layer, BatchNorm1d):
                    inputs.append(x)
                x = layer(x)
        return inputs


def cross_entropy(logits: Array, labels: Array) -> Tuple[float, Array]:
    """Mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(labels.size), labels] + 1e-12).mean()
    grad = probs
    grad[np.arange(labels.size), labels] -= 1.0
    return float(loss), grad / labels.size


def accuracy(model: MLP, x: Array, labels: Array) -> float:
    model.train(False)
    with no_grad():
        predicted = model(x).argmax(axis=1)
    return float((predicted == labels).mean())


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def one_thread() -> contextlib.ExitStack:
    """fastnorm, and NumPy's BLAS where threadpoolctl is installed, on one thread: the arrays are (128, 64),
    and threads would wait for each other longer than they compute (the demo took 25 s instead of 1.4 s
    with two threads each on a busy 2-core machine)."""
    stack = contextlib.ExitStack()
    stack.enter_context(threads(1))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS keeps its own thread count
        return stack
    stack.enter_context(threadpool_limits(1, user_api="blas"))
    return stack


def run(epochs: int = 40, batch: int = 128, lr: float = 0.05, momentum: float = 0.9,
        out: TextIO = sys.stdout) -> Dict[str, float]:
    with one_thread():
        return _train(epochs, batch, lr, momentum, out)


def _train(epochs: int, batch: int, lr: float, momentum: float, out: TextIO) -> Dict[str, float]:
    x_train, y_train = spiral(1500, seed=0)
    x_test, y_test = spiral(500, seed=1)
    model = MLP()
    velocity: Dict[int, Array] = {}
    steps = (x_train.shape[0] + batch - 1) // batch
    start = time.perf_counter()
    print(f"fastnorm demo: 3-layer MLP with BatchNorm1d on a 3-class spiral "
          f"({x_train.shape[0]} training points, {x_test.shape[0]} held out), one thread", file=out)
    print("'stats gap': max over BatchNorm channels of |running - exact| / exact std, "
          "exact = statistics of the whole training set", file=out)
    rng = np.random.default_rng(2)
    batch_acc = gap = 0.0
    for epoch in range(1, epochs + 1):
        model.train(True)
        # Cosine decay: the weights settle, and the running statistics can follow them.
        step_lr = lr * 0.5 * (1.0 + np.cos(np.pi * (epoch - 1) / epochs))
        order = rng.permutation(x_train.shape[0])
        total = 0.0
        correct = 0
        for step in range(steps):
            index = order[step * batch:(step + 1) * batch]
            logits = model(x_train[index])
            correct += int((logits.argmax(axis=1) == y_train[index]).sum())
            loss, grad = cross_entropy(logits, y_train[index])
            model.backward(grad)
            for k, (param, g) in enumerate(model.parameters()):
                v = velocity.get(k, 0.0) * momentum - step_lr * g
                velocity[k] = v
                param += v.astype(param.dtype)
            total += loss
            if out.isatty():
                print(f"\repoch {epoch:3d} {_bar(step + 1, steps)}", end="", file=out, flush=True)
        gap = max(np.max(np.abs(norm.running_mean - x.mean(axis=0)) / x.std(axis=0))
                  for norm, x in zip(model.norms, model.norm_inputs(x_train)))
        batch_acc = correct / x_train.shape[0]
        line = (f"epoch {epoch:3d} {_bar(steps, steps)} loss {total / steps:.4f}  batch accuracy {batch_acc:.3f}"
                f"  stats gap {gap:.4f}")
        print(("\r" if out.isatty() else "") + line, file=out, flush=True)
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    print(f"training mode (batch statistics), last epoch: accuracy {batch_acc:.3f}", file=out)
    print(f"eval mode (running statistics): training set {train_acc:.3f}, held-out {test_acc:.3f}", file=out)
    print(f"done in {time.perf_counter() - start:.1f} s", file=out)
    return dict(batch_accuracy=batch_acc, train_accuracy=train_acc, test_accuracy=test_acc, stats_gap=float(gap))
