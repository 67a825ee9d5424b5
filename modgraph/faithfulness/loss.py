"""The behavioural loss: how much an ablated forward changes what the model computes.

Every ablation in this package is scored the same way, in one pass over the data that runs the
model once as it is (the reference) and once per ablated forward::

    loss = E_rows ‖out_ablated − out‖²          (summed over output coordinates)
    relative = loss / tr Cov(out)              (unit-free: 1 = as large as the output's spread)

where a row is a data point (at one analysed output position, for outputs with positions).
With ``labels`` and a ``metric`` (e.g. ``"accuracy"``) the metric of the reference and of every
ablated forward are reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validate import check_model
from ..capture import Session, session
from ..data import data_rows
from ..errors import ModgraphTypeError, ModgraphValueError
from ..options import Options
from ..plan import output_name, select_tensor

__all__ = ["BehaviouralLoss", "behavioural_loss"]

#: An ablated forward inside a session: ``(x, reference output rows (R, d_out))`` → the ablated
#: output rows ``(R, d_out)``.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: A metric: ``(output rows (R, d_out), label rows (R, ...))`` → per-row values ``(R,)`` or
#: their mean (a 0-d Tensor or a float).
Metric = Callable[[torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class BehaviouralLoss:
    """How much an ablation changes the model output over the data.

    Attributes
    ----------
    mse : float
        ``E_rows ‖out_ablated − out‖²``: the mean squared change of the output, summed over the
        output coordinates and averaged over the rows (data points × analysed output positions).
    relative : float
        ``mse / tr Cov(out)``, the change as a share of the output's own variance (unit-free;
        ``find_modules(epsilon="ablation")`` bounds it by ``loss_tolerance``).
    output_variance : float
        ``tr Cov(out) = E ‖out − E out‖²`` of the model as it is.
    n_rows : int
        Rows averaged over.
    metric : float or None
        The metric of the model as it is (with ``labels`` and ``metric``), e.g. its accuracy.
    ablated_metric : float or None
        The metric of the ablated forward.
    """

    mse: float
    relative: float
    output_variance: float
    n_rows: int
    metric: float | None = None
    ablated_metric: float | None = None

    @property
    def metric_change(self) -> float | None:
        """``ablated_metric − metric`` (None without a metric): negative when the ablation
        lowers e.g. the accuracy."""
        if self.metric is None or self.ablated_metric is None:
            return None
        return self.ablated_metric - self.metric


def accuracy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: 1 where the largest output is the label's class, else 0."""
    return (output.argmax(-1) == labels.reshape(output.shape[0])).to(torch.float64)


def check_metric(labels: Any, metric: Any, where: str) -> tuple[torch.Tensor | None, Metric | None]:
    """``labels`` (Tensor or array ``(N, ...)``) and ``metric`` (``"accuracy"`` or a callable)
    come together or not at all."""
    if (labels is None) != (metric is None):
        given, missing = ("labels", "metric") if metric is None else ("metric", "labels")
        raise ModgraphValueError(
            f"The {given!r} parameter of {where} needs {missing!r} too: the metric is computed "
            "from the model output and the labels. Pass both, or neither."
        )
    if labels is None:
        return None, None
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor) or labels.ndim == 0:
        raise ModgraphTypeError(
            f"The 'labels' parameter of {where} must be a Tensor or array (N, ...), one label "
            f"per data point in data order. Got {type(labels).__name__}."
        )
    if isinstance(metric, str):
        if metric != "accuracy":
            raise ModgraphValueError(
                f"The 'metric' parameter of {where} must be 'accuracy' or a callable "
                f"(output rows, label rows) -> per-row values. Got {metric!r}."
            )
        return labels, accuracy
    if not callable(metric):
        raise ModgraphTypeError(
            f"The 'metric' parameter of {where} must be 'accuracy' or a callable (output rows, "
            f"label rows) -> per-row values. Got {type(metric).__name__}."
        )
    return labels, metric


def _label_rows(labels: torch.Tensor, start: int, batch: int, rows: int) -> torch.Tensor:
    """The labels of one batch as rows: ``(B, ...)``, or ``(B, P, ...)`` flattened to
    ``(B·P, ...)`` for outputs with ``P`` analysed positions."""
    part = labels[start : start + batch]
    if part.shape[0] != batch:
        raise ModgraphValueError(
            f"labels has {labels.shape[0]} rows, fewer than the data; give one label per data "
            "point, in data order."
        )
    if rows == batch:
        return part
    per = rows // batch
    if part.ndim < 2 or part.shape[1] != per:
        raise ModgraphValueError(
            f"the model output has {per} analysed positions per data point, so labels must be "
            f"(N, {per}, ...) (one label per position); got {tuple(labels.shape)}."
        )
    return part.reshape(rows, *part.shape[2:])


def _metric_sum(metric: Metric, output: torch.Tensor, labels: torch.Tensor) -> float:
    value = metric(output, labels.to(output.device))
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim == 0:
        return float(value) * output.shape[0]
    if value.shape[0] != output.shape[0]:
        raise ModgraphValueError(
            f"metric returned {tuple(value.shape)} values for {output.shape[0]} rows; return "
            "one value per row, or their mean."
        )
    return float(value.sum())


def measure_losses(
    sess: Session,
    forwards: Sequence[Forward],
    desc: str,
    labels: torch.Tensor | None = None,
    metric: Metric | None = None,
) -> list[BehaviouralLoss]:
    """The behavioural loss of every forward in ``forwards``, in one pass over the data: per
    batch the model runs once as it is (the reference) and once per forward."""
    out = sess.plan.output
    n, start = 0, 0
    shift: torch.Tensor | None = None
    s1: torch.Tensor | float = 0.0
    s2 = 0.0
    sq = np.zeros(len(forwards))
    ref_metric, metrics = 0.0, np.zeros(len(forwards))
    for x in sess.batches(desc):
        raw = sess.tracer.run(x, record=[out])[out]
        ref = raw.to(torch.float64)
        if shift is None:  # sums about the first batch's mean: no cancellation in the variance
            shift = ref.mean(0)
        centred = ref - shift
        s1 = s1 + centred.sum(0)
        s2 += float(centred.square().sum())
        rows = ref.shape[0]
        lab = None
        if labels is not None and metric is not None:
            lab = _label_rows(labels, start, int(x.shape[0]), rows)
            ref_metric += _metric_sum(metric, raw, lab)
        for i, forward in enumerate(forwards):
            ablated = forward(x, raw)
            sq[i] += float((ablated.to(torch.float64) - ref).square().sum())
            if lab is not None and metric is not None:
                metrics[i] += _metric_sum(metric, ablated, lab)
        n += rows
        start += int(x.shape[0])
    if labels is not None and start != labels.shape[0]:
        raise ModgraphValueError(
            f"labels has {labels.shape[0]} rows but the data {start}; give one label per data "
            "point, in data order."
        )
    mean = s1 / n if isinstance(s1, torch.Tensor) else torch.zeros(1)
    variance = max(s2 / n - float(mean.square().sum()), 0.0)
    with_metric = labels is not None
    return [
        BehaviouralLoss(
            mse=float(sq[i] / n),
            relative=_share(float(sq[i] / n), variance),
            output_variance=variance,
            n_rows=n,
            metric=ref_metric / n if with_metric else None,
            ablated_metric=float(metrics[i] / n) if with_metric else None,
        )
        for i in range(len(forwards))
    ]


def _share(mse: float, variance: float) -> float:
    """``mse / variance``; for a constant output 0 when nothing changed, else inf."""
    if variance > 0:
        return mse / variance
    return 0.0 if mse == 0 else float("inf")


_WHERE = "behavioural_loss"


def behavioural_loss(
    model: nn.Module,
    data: Any,
    ablated_forward: Callable[[nn.Module, torch.Tensor], Any],
    *,
    labels: Any = None,
    metric: str | Metric | None = None,
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> BehaviouralLoss:
    """The mean squared change of the model output that ``ablated_forward`` causes.

    Parameters
    ----------
    model : torch.nn.Module
        Never modified (mode, ``requires_grad`` and ``.grad`` restored, also on error).
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
    ablated_forward : callable
        ``ablated_forward(model, x)`` returns what ``model(x)`` returns, for an ablated model:
        it gets the model modgraph runs (``model`` itself, or its ``dtype``/``device`` copy)
        and a batch, e.g. registers a forward pre-hook, calls ``model(x)`` and removes the
        hook in a ``finally``.
    labels : Tensor or array (N,) or (N, P, ...), optional
        One label per data point (per analysed output position), in data order; with
        ``metric``.
    metric : "accuracy" or callable, optional
        ``metric(output_rows, label_rows)`` → per-row values (or their mean); ``"accuracy"``:
        the argmax of the output equals the label.
    batch_size, dtype, device, output, progress
        As for :func:`~modgraph.interaction_basis`.

    Returns
    -------
    BehaviouralLoss
        ``mse``, ``relative`` (share of ``tr Cov(output)``), the metric before and after.

    Examples
    --------
    >>> import torch
    >>> from modgraph.faithfulness import behavioural_loss
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> loss = behavioural_loss(model, torch.randn(64, 4), lambda m, x: m(x) + 1.0)
    >>> round(loss.mse, 6)
    3.0
    """
    check_model(model, _WHERE)
    options = Options.from_arguments(locals(), _WHERE)
    if not callable(ablated_forward):
        raise ModgraphTypeError(
            f"The 'ablated_forward' parameter of {_WHERE} must be a callable (model, x) -> "
            f"output. Got {type(ablated_forward).__name__}."
        )
    label_tensor, metric_fn = check_metric(labels, metric, _WHERE)
    rows = data_rows(data)
    if label_tensor is not None and rows is not None and label_tensor.shape[0] != rows:
        raise ModgraphValueError(
            f"The 'labels' parameter of {_WHERE} has {label_tensor.shape[0]} rows for {rows} "
            "data points; give one label per data point, in data order."
        )
    out = output_name(name for name, _ in model.named_modules())
    with session(model, data, [out], options) as sess:
        plan = sess.plan
        layout = plan.layouts[plan.output]

        def forward(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
            value = select_tensor(ablated_forward(sess.model, x.clone()), plan.select_output)
            rows = value if value.ndim == 2 else layout.rows(value)
            if rows.ndim != 2 and rows.numel() == reference.numel():
                rows = rows.reshape(reference.shape)
            if tuple(rows.shape) != tuple(reference.shape):
                raise ModgraphValueError(
                    f"ablated_forward returned an output of shape {tuple(value.shape)}, which "
                    "does not match the model's own output on the same batch; return what "
                    "model(x) returns."
                )
            return rows

        (loss,) = measure_losses(sess, [forward], "behavioural loss", label_tensor, metric_fn)
    return loss
