"""Ablated forwards: a node layer with only some of its features, a layer pair with only some of
its interactions.

Both run through the session's :class:`~modgraph.capture.Tracer` (its ``substitute`` replaces a
node layer's input for its module), so they see the model exactly as the measurements do:

- **features** (:class:`FeatureAblation`): ``a → μ + (C⁺)ᵀ (m ⊙ Cᵀ (a − μ))`` with ``m`` the 0/1
  mask of the kept features; keeping none is mean ablation, keeping all is the projection on the
  basis (whose change of the output is what the dropped directions carried).
- **edges** (:class:`EdgeAblation`): for every target feature ``i`` of the pair ``(l, l+1)``, the
  source features whose edge to ``i`` is cut are set to their mean (``a − (C⁺)ᵀ (cut_i ⊙ f̂)``),
  the section runs, and ``f̂'_i`` is read off; the target activation becomes
  ``a' + (C'⁺)ᵀ (f̂'_cut − f̂')``, and the model runs on from there. Nothing cut is the model
  itself. Batched over target features: an elementwise section ``σ(W a + b)`` needs one matrix
  product per chunk of features (``z − W (C⁺)ᵀ (cut ⊙ f̂)``), any other section runs on the
  batch repeated once per feature of the chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..basis import InteractionBasis
from ..capture import Session
from ..errors import ModgraphValueError
from ..jacobian import linear_preactivation
from ..layout import Layout
from ..plan import Section

#: Elements of the largest temporary of an edge-ablated forward (about 32 MB in float64).
CHUNK_ELEMENTS = 2**22


class BasisTensors:
    """``μ``, ``C``, ``C⁺`` of one node layer on the compute device (float64); ``identity``
    for the neuron basis (``C = C⁺ = I``: masks instead of products)."""

    def __init__(self, basis: InteractionBasis, device: torch.device) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(a, dtype=torch.float64, device=device)

        self.mean, self.C, self.C_pinv = t(basis.mean), t(basis.C), t(basis.C_pinv)
        self.identity = basis.kind == "neuron" and basis.k == basis.d

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """``f̂ = Cᵀ (a − μ)`` of activations ``(..., d)``, float64."""
        centred = a.to(torch.float64) - self.mean
        return centred if self.identity else centred @ self.C

    def back(self, f: torch.Tensor) -> torch.Tensor:
        """``(C⁺)ᵀ f̂``: features ``(..., k)`` back to activations ``(..., d)``."""
        return f if self.identity else f @ self.C_pinv


def features_last(layout: Layout, a: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` to ``a`` with the features on the last axis (convolution inputs have them
    on axis 1), and return the result in ``a``'s own layout and dtype."""
    if layout.channels_first:
        return fn(a.movedim(1, -1)).movedim(-1, 1).to(a.dtype)
    return fn(a).to(a.dtype)


def check_ablatable(sess: Session, layer: str, where: str) -> None:
    if layer == sess.plan.output:
        raise ModgraphValueError(
            f"{where}: the model output ({layer!r}) cannot be ablated: it is no module's input, "
            "so no forward pre-hook can replace it. Ablate a hidden node layer."
        )


class FeatureAblation:
    """The forward with node layer ``basis.layer`` reduced to the features where ``keep``."""

    def __init__(self, sess: Session, basis: InteractionBasis, keep: np.ndarray) -> None:
        self.sess, self.layer = sess, basis.layer
        self.basis = BasisTensors(basis, sess.device)
        self.mask = torch.tensor(keep, dtype=torch.float64, device=sess.device)
        self.layout = sess.plan.layouts[basis.layer]

    def ablate(self, a: torch.Tensor) -> torch.Tensor:
        b = self.basis
        return features_last(self.layout, a, lambda v: b.mean + b.back(b.features(v) * self.mask))

    def __call__(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        out = self.sess.plan.output
        return self.sess.tracer.run(x, record=[out], substitute={self.layer: self.ablate})[out]


class EdgeAblation:
    """The forward with the edges of ``section`` where ``keep (k', k)`` is False cut."""

    def __init__(
        self,
        sess: Session,
        section: Section,
        source: InteractionBasis,
        target: InteractionBasis,
        keep: np.ndarray,
    ) -> None:
        self.sess, self.section = sess, section
        self.src, self.dst = BasisTensors(source, sess.device), BasisTensors(target, sess.device)
        self.cut_rows = np.flatnonzero(~keep.all(1))  # target features with a cut edge
        self.drop = torch.tensor(~keep, dtype=torch.float64, device=sess.device)
        self.folded = None
        if section.elementwise:
            assert section.linear is not None
            W = section.linear.weight.detach().to(torch.float64)
            self.folded = W if self.src.identity else W @ self.src.C_pinv.T  # (d', k)

    def __call__(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.cut_rows.size == 0:
            return reference
        plan, tracer = self.sess.plan, self.sess.tracer
        src, dst, out = self.section.source, self.section.target, plan.output
        store = tracer.run(x, record=[src, dst], stop=None if dst == out else dst)
        target = store[dst]
        f_target = self.dst.features(target)  # (R', k')
        if self.folded is not None and store[src].shape[0] == target.shape[0]:
            cut = self._elementwise(store[src])
        else:
            cut = self._general(x, target.shape[0])
        delta = torch.zeros_like(f_target)
        delta[:, self.cut_rows] = cut - f_target[:, self.cut_rows]
        change = self.dst.back(delta)  # (R', d')
        if dst == out:
            return (reference.to(torch.float64) + change).to(reference.dtype)
        layout = plan.layouts[dst]
        raw = layout.unrows(change.reshape(x.shape[0], -1, change.shape[-1]))
        return tracer.run(x, record=[out], substitute={dst: lambda a: a + raw.to(a.dtype)})[out]

    def _chunks(self, per_feature: int) -> list[np.ndarray]:
        size = max(1, CHUNK_ELEMENTS // max(1, per_feature))
        return [self.cut_rows[i : i + size] for i in range(0, self.cut_rows.size, size)]

    def _target_features(self, acts: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """``f̂'_i`` of chunk ``acts (m, R', d')``, target feature ``idx[c]`` from ``acts[c]``:
        ``(R', m)``."""
        centred = acts.to(torch.float64) - self.dst.mean
        if self.dst.identity:
            return torch.diagonal(centred[:, :, idx], dim1=0, dim2=2)
        return torch.einsum("mrd,dm->rm", centred, self.dst.C[:, idx])

    def _elementwise(self, a: torch.Tensor) -> torch.Tensor:
        """Target features ``(R, n_cut)`` of an elementwise section ``σ(W a + b)``: the cut
        source features enter as ``z − W (C⁺)ᵀ (cut_i ⊙ f̂)``."""
        assert self.folded is not None
        section = self.section
        z = linear_preactivation(section, a)
        f = self.src.features(a)  # (R, k)
        parts = []
        width = max(self.folded.shape[0], f.shape[1])
        for idx in self._chunks(a.shape[0] * width):
            removed = (f[None] * self.drop[idx][:, None, :]) @ self.folded.T  # (m, R, d')
            moved = (z.to(torch.float64)[None] - removed).to(z.dtype)
            acts = section.activation(moved) if section.activation is not None else moved
            parts.append(self._target_features(acts, idx))
        return torch.cat(parts, 1)

    def _general(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Target features ``(R', n_cut)`` of any section: the batch runs once per target feature
        of a chunk, each copy with its own source features set to their mean."""
        plan, tracer = self.sess.plan, self.sess.tracer
        src, dst, out = self.section.source, self.section.target, plan.output
        layout = plan.layouts[src]
        batch = x.shape[0]
        width = max(
            x[0].numel(), plan.dims[src] * layout.n_positions, rows // batch * plan.dims[dst]
        )
        parts = []
        for idx in self._chunks(batch * width):
            m = idx.size
            drop = self.drop[idx]

            def cut(v: torch.Tensor, m: int = m, drop: torch.Tensor = drop) -> torch.Tensor:
                shape = v.shape
                v = v.reshape(m, -1, shape[-1])
                removed = self.src.back(self.src.features(v) * drop[:, None, :])
                return (v.to(torch.float64) - removed).reshape(shape)

            def substitute(a: torch.Tensor) -> torch.Tensor:
                return features_last(layout, a, cut)

            repeated = x.repeat(m, *([1] * (x.ndim - 1)))
            acts = tracer.run(
                repeated,
                record=[dst],
                substitute={src: substitute},
                stop=None if dst == out else dst,
            )[dst]
            parts.append(self._target_features(acts.reshape(m, rows, -1), idx))
        return torch.cat(parts, 1)
