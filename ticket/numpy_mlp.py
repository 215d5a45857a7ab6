"""Masked training, evaluation and saliency of a ticket's MLP in numpy alone.

A device trains a few thousand surviving weights per round. Importing torch for that costs more
than the training itself: ~2.4 s and ~220 MB in a ClientApp process that Flower starts afresh
for every message, on a device with 512 MB-1 GB. Every model in ticket/models.py is an MLP
(fc1..fcN, ReLU between, logits out), whose forward and backward pass are a few matrix
products, so the device path runs them here and never loads torch.

Parameters use torch's names and layouts (`fc1.weight` [out, in], `fc1.bias` [out]): the same
dicts a Ticket holds and PackLayout packs, so values move between this module and
ticket/train.py unchanged. The semantics follow ticket/train.py step for step (masked
gradients, masked optimiser state, masked weights after every step; torch's Adam and SGD
updates), so a numpy-trained device and a torch-trained one aggregate alike; tests check the
two agree on the same batches.
"""

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ticket.errors import TicketError
from ticket.metrics import roc_auc
from ticket.train_config import EvalResult, TrainConfig

Array = npt.NDArray[np.float32]
Params = dict[str, Array]

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which ticket/train.py uses
ADAM_EPS = 1e-8
SALIENCY_BATCH = 256  # rows per pass; the gradient is of the mean loss over all rows

_LAYER = re.compile(r"fc([1-9][0-9]*)\.(weight|bias)")


def is_mlp(names: Iterable[str]) -> bool:
    """True when `names` are exactly fc1..fcN, each with a weight and a bias."""
    found = set(names)
    layers = {int(m.group(1)) for m in map(_LAYER.fullmatch, found) if m}
    expected = {f"fc{i}.{kind}" for i in range(1, len(layers) + 1) for kind in ("weight", "bias")}
    return bool(layers) and found == expected


def depth(params: Mapping[str, np.ndarray]) -> int:
    if not is_mlp(params):
        raise TicketError(
            f"not an MLP's parameters (fc1..fcN weight and bias): {', '.join(sorted(params))}"
        )
    return len(params) // 2


def last_layer(params: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """The names of the output layer's weight and bias."""
    n = depth(params)
    return f"fc{n}.weight", f"fc{n}.bias"


def logits(params: Mapping[str, np.ndarray], x: np.ndarray, *, batch_size: int = 2048) -> Array:
    """The network's logits [N, classes] for rows `x` [N, features...], in batches."""
    n = depth(params)
    rows = _rows(x)
    out = [
        _forward(params, rows[i : i + batch_size], n)[-1] for i in range(0, len(rows), batch_size)
    ]
    if not out:
        return np.zeros((0, params[f"fc{n}.bias"].shape[0]), np.float32)
    return np.concatenate(out)


def probabilities(params: Mapping[str, np.ndarray], x: np.ndarray) -> Array:
    """Softmax of the logits [N, classes]."""
    z = logits(params, x)
    z = z - z.max(axis=1, keepdims=True)
    e: Array = np.exp(z)
    out: Array = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def evaluate(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> EvalResult:
    """Mean cross-entropy, accuracy and (for two classes) ROC-AUC on (x, y)."""
    if len(x) == 0:
        raise TicketError("no evaluation examples")
    _check_pair(x, y)
    z = logits(params, x)
    labels = np.asarray(y, np.int64)
    loss = float(_cross_entropy(z, labels).mean())
    accuracy = float((z.argmax(axis=1) == labels).mean())
    auc = None
    if z.shape[1] == 2:
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted.astype(np.float64))
        auc = roc_auc(e[:, 1] / e.sum(axis=1), labels)
    return EvalResult(loss=loss, accuracy=accuracy, auc=auc, examples=len(labels))


def train_masked(
    params: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    trainable: Collection[str] | None = None,
    order: Iterable[np.ndarray] | None = None,
) -> tuple[Params, float]:
    """Train a copy of `params` on (x, y) with `masks` fixed; (new params, last epoch's loss).

    `trainable` names the parameters that learn (e.g. only the output layer's); the others stay
    bit-identical. The data order depends only on `seed`; `order` (one index array per epoch)
    replaces it, so tests can feed ticket/train.py's batches.
    """
    n = depth(params)
    rows, labels = _rows(x), np.asarray(y, np.int64)
    _check_pair(rows, labels)
    if len(rows) == 0:
        raise TicketError("no training examples")
    names = set(params) if trainable is None else set(trainable)
    unknown = sorted(names - set(params))
    if unknown:
        raise TicketError(f"no such parameter(s) to train: {', '.join(unknown)}")
    keep = {name: np.asarray(m, np.bool_) for name, m in masks.items()}
    weights = {name: np.array(p, np.float32) for name, p in params.items()}
    for name, m in keep.items():
        weights[name] *= m
    optimiser = _Optimiser(config, sorted(names))
    epochs = _epoch_orders(len(rows), config.epochs, seed, order)
    mean_loss = float("nan")
    for epoch_order in epochs:
        total, batches = 0.0, 0
        for start in range(0, len(rows), config.batch_size):
            batch = epoch_order[start : start + config.batch_size]
            loss, grads = _loss_and_grads(weights, rows[batch], labels[batch], n)
            for name, m in keep.items():
                grads[name] *= m
            optimiser.step(weights, grads, keep)
            total += loss
            batches += 1
        mean_loss = total / batches
    return weights, mean_loss


def connection_saliency(
    params: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    scale: float,
) -> tuple[Params, float]:
    """SNIP's |dL/dw * w| per masked parameter (zero where pruned), scaled so the largest is
    `scale`, and the mean loss over the rows (ticket/fleet_search/snip.py's torch version)."""
    n = depth(params)
    rows, labels = _rows(x), np.asarray(y, np.int64)
    _check_pair(rows, labels)
    if len(rows) == 0:
        raise TicketError("no training examples to score saliency on")
    weights = {name: np.asarray(p, np.float32) for name, p in params.items()}
    grads = {name: np.zeros_like(p) for name, p in weights.items()}
    total = 0.0
    for start in range(0, len(rows), SALIENCY_BATCH):
        end = start + SALIENCY_BATCH
        share = (min(end, len(rows)) - start) / len(rows)  # this batch's part of the mean
        loss, batch_grads = _loss_and_grads(weights, rows[start:end], labels[start:end], n)
        total += loss * share
        for name, g in batch_grads.items():
            grads[name] += g * np.float32(share)
    scores = {
        name: (np.abs(grads[name] * weights[name]) * np.asarray(m, np.bool_)).astype(np.float32)
        for name, m in masks.items()
    }
    top = max(float(s.max()) for s in scores.values())
    if not np.isfinite(top):
        raise TicketError("saliency is not finite on these rows")
    if top == 0.0:
        raise TicketError("saliency is zero everywhere on these rows")
    factor = np.float32(scale / top)
    return {name: s * factor for name, s in scores.items()}, total


# ---------------------------------------------------------------- the passes


def _rows(x: np.ndarray) -> Array:
    data = np.asarray(x, np.float32)
    # [N, features], as MLP.forward's flatten(1); an empty batch keeps its feature width.
    return data.reshape(len(data), int(np.prod(data.shape[1:], dtype=np.int64)))


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise TicketError(f"{len(x)} inputs but {len(y)} labels")


def _forward(params: Mapping[str, np.ndarray], x: Array, n: int) -> list[Array]:
    """[input, pre-activation of fc1, ..., logits]; ReLU is applied when a layer is read."""
    outputs = [x]
    h = x
    for i in range(1, n + 1):
        z = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
        outputs.append(z)
        h = np.maximum(z, 0.0)
    return outputs


def _cross_entropy(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    per_row: np.ndarray = log_norm - z[np.arange(len(z)), labels]
    return per_row


def _loss_and_grads(
    params: Mapping[str, np.ndarray], x: Array, y: np.ndarray, n: int
) -> tuple[float, Params]:
    """Mean cross-entropy over the batch and its gradient for every parameter."""
    outputs = _forward(params, x, n)
    z = outputs[-1]
    classes = z.shape[1]
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise TicketError(f"labels must lie in [0, {classes}), got {y.min()}..{y.max()}")
    loss = float(_cross_entropy(z, y).mean())
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    delta = shifted / shifted.sum(axis=1, keepdims=True)
    delta[np.arange(len(y)), y] -= 1.0
    delta = (delta / np.float32(len(y))).astype(np.float32)  # dL/dz of the mean loss
    grads: Params = {}
    for i in range(n, 0, -1):
        below = outputs[i - 1] if i == 1 else np.maximum(outputs[i - 1], 0.0)
        grads[f"fc{i}.weight"] = delta.T @ below
        grads[f"fc{i}.bias"] = delta.sum(axis=0)
        if i > 1:
            delta = (delta @ params[f"fc{i}.weight"]) * (outputs[i - 1] > 0)
    return loss, grads


def _epoch_orders(
    rows: int, epochs: int, seed: int, order: Iterable[np.ndarray] | None
) -> list[np.ndarray]:
    if order is not None:
        given = [np.asarray(o, np.int64) for o in order]
        if len(given) != epochs:
            raise TicketError(f"{len(given)} epoch orders for {epochs} epochs")
        return given
    rng = np.random.default_rng(seed)
    return [rng.permutation(rows) for _ in range(epochs)]


@dataclass
class _Optimiser:
    """torch.optim.Adam / SGD (L2 weight decay, no dampening) over the trainable names."""

    config: TrainConfig
    names: list[str]
    steps: int = 0
    first: dict[str, Array] = field(default_factory=dict)  # Adam's m, or SGD's momentum buffer
    second: dict[str, Array] = field(default_factory=dict)  # Adam's v

    def step(
        self, weights: Params, grads: Mapping[str, Array], keep: Mapping[str, np.ndarray]
    ) -> None:
        self.steps += 1
        c = self.config
        for name in self.names:
            g = grads[name]
            if c.weight_decay:
                g = g + np.float32(c.weight_decay) * weights[name]
            if c.optimizer == "adam":
                self._adam(name, weights, g)
            else:
                self._sgd(name, weights, g)
            # Masked state as well as weights: momentum must not carry a pruned weight off 0.
            if name in keep:
                for state in (self.first, self.second):
                    if name in state:
                        state[name] *= keep[name]
                weights[name] *= keep[name]

    def _adam(self, name: str, weights: Params, g: Array) -> None:
        b1, b2 = ADAM_BETAS
        m = self.first.setdefault(name, np.zeros_like(g))
        v = self.second.setdefault(name, np.zeros_like(g))
        m *= np.float32(b1)
        m += np.float32(1 - b1) * g
        v *= np.float32(b2)
        v += np.float32(1 - b2) * g * g
        correction1 = 1 - b1**self.steps
        correction2 = 1 - b2**self.steps
        denominator = np.sqrt(v) / np.float32(np.sqrt(correction2)) + np.float32(ADAM_EPS)
        weights[name] -= np.float32(self.config.lr / correction1) * (m / denominator)

    def _sgd(self, name: str, weights: Params, g: Array) -> None:
        if self.config.momentum:
            buffer = self.first.get(name)
            if buffer is None:
                buffer = self.first[name] = g.copy()
            else:
                buffer *= np.float32(self.config.momentum)
                buffer += g
            g = buffer
        weights[name] -= np.float32(self.config.lr) * g
