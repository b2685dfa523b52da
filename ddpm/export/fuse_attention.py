"""Fuse the exporters' decomposed multi-head attention into one ``MultiHeadAttention`` node.

onnxruntime.transformers' UNet fusions do not match the graphs either ONNX exporter writes
for diffusers' ``Attention`` (torch's ``scaled_dot_product_attention`` decomposed with the
scale split into two ``Mul(sqrt(scale))``): 12+ nodes that materialise the (B, H, S, S) score
tensor and make three layout copies per layer, a large share of a CPU UNet2DModel call for a
small share of its FLOPs. :class:`FuseSdpaAttention` rewrites it into
``com.microsoft.MultiHeadAttention``, which has CPU and CUDA kernels and works on the
(B, S, H*D) projections directly.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


class GraphRewrite:
    """Index of an ONNX graph shared by the rewrites of ``--optimize``: who produces and who
    reads each value, and the constant behind a name (initializer or ``Constant`` node)."""

    def __init__(self, model) -> None:
        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {t.name: t for t in g.initializer}

    def _const(self, name: str) -> np.ndarray | None:
        import onnx.numpy_helper as nh

        if name in self.inits:
            return nh.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return nh.to_array(a.t)
        return None


class FuseSdpaAttention(GraphRewrite):
    """Matched pattern (q, k, v are (B, S, E) outputs of the projection Add/MatMul)::

        q -> Reshape(B,-1,H,D) -> Transpose(0,2,1,3) -> [Mul(c)] --.
        k -> Reshape(B,-1,H,D) -> Transpose(0,2,3,1) -> [Mul(c)] --MatMul -> Softmax(-1) --.
        v -> Reshape(B,-1,H,D) -> Transpose(0,2,1,3) ------------------------------------ MatMul
                                               -> Transpose(0,2,1,3) -> Reshape(B,-1,E) -> out

    The dynamo exporter writes k's ``Transpose(0,2,3,1)`` as ``Transpose(0,2,1,3) ->
    Reshape(B*H,S,D) -> Transpose(0,2,1) -> Reshape(B,H,D,S)`` (the same layout); both forms
    match. The whole becomes
    ``out = MultiHeadAttention(q, k, v; num_heads=H, scale=1/sqrt(D))``. The scale is
    SDPA's default, which is what the two ``Mul``s compute; export validation against torch
    proves it for every fused model. H comes from the Reshape's shape, E from q's producer.
    """

    def __init__(self, model) -> None:
        super().__init__(model)
        self.fused = 0

    def _only(self, name: str, op: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op else None

    def _perm(self, n) -> list[int]:
        return next((list(a.ints) for a in n.attribute if a.name == "perm"), [])

    def _heads(self, reshape) -> int | None:
        shape = self._const(reshape.input[1])
        if shape is not None and shape.size == 4:
            return int(shape[2])
        cat = self._only(reshape.input[1], "Concat")
        if cat is None or len(cat.input) != 4:
            return None
        h = self._const(cat.input[2])
        return int(h.reshape(-1)[0]) if h is not None and h.size == 1 else None

    def _width(self, name: str) -> int | None:
        """E of a projection output: the MatMul weight's last dim (through a bias Add)."""
        n = self.producer.get(name)
        if n is not None and n.op_type == "Add":
            n = next((self.producer.get(i) for i in n.input if self._only(i, "MatMul")), None)
        if n is None or n.op_type != "MatMul":
            return None
        w = self._const(n.input[1])
        return int(w.shape[-1]) if w is not None and w.ndim == 2 else None

    def _head_input(self, name: str, perm: list[int]) -> tuple[str, int] | None:
        """(B, S, E) source and H behind ``[Mul(c)] <- Transpose(perm) <- Reshape``."""
        n = self.producer.get(name)
        if n is not None and n.op_type == "Mul":
            n = next((self.producer.get(i) for i in n.input
                      if self._only(i, "Transpose") or self._only(i, "Reshape")), None)
        if n is not None and n.op_type == "Reshape" and perm == [0, 2, 3, 1]:
            n = self._flat_key_transpose(n)
            perm = [0, 2, 1, 3]
        if n is None or n.op_type != "Transpose" or self._perm(n) != perm:
            return None
        r = self._only(n.input[0], "Reshape")
        h = self._heads(r) if r is not None else None
        return (r.input[0], h) if h else None

    def _flat_key_transpose(self, reshape):
        """The ``Transpose(0,2,1,3)`` behind dynamo's ``Reshape <- Transpose(0,2,1) <- Reshape``."""
        t = self._only(reshape.input[0], "Transpose")
        r = self._only(t.input[0], "Reshape") if t is not None and self._perm(t) == [0, 2, 1] else None
        return self._only(r.input[0], "Transpose") if r is not None else None

    def _match(self, sm):
        if next((a.i for a in sm.attribute if a.name == "axis"), -1) not in (-1, 3):
            return None
        qk = self._only(sm.input[0], "MatMul")
        users = self.consumers[sm.output[0]]
        if qk is None or len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != sm.output[0]:
            return None
        pv = users[0]
        q = self._head_input(qk.input[0], [0, 2, 1, 3])
        k = self._head_input(qk.input[1], [0, 2, 3, 1])
        v = self._head_input(pv.input[1], [0, 2, 1, 3])
        after = self.consumers[pv.output[0]]
        if not (q and k and v) or len(after) != 1 or after[0].op_type != "Transpose":
            return None
        if self._perm(after[0]) != [0, 2, 1, 3] or len({q[1], k[1], v[1]}) != 1:
            return None
        fin = self.consumers[after[0].output[0]]
        if len(fin) != 1 or fin[0].op_type != "Reshape":
            return None
        width = self._width(q[0])
        if width is None or width % q[1]:
            return None
        return q[0], k[0], v[0], q[1], width // q[1], fin[0]

    def apply(self):
        """Rewrite every match in place; returns the model (dead nodes pruned)."""
        from onnx import helper

        g = self.model.graph
        for sm in [n for n in g.node if n.op_type == "Softmax"]:
            m = self._match(sm)
            if m is None:
                continue
            q, k, v, heads, dim, fin = m
            mha = helper.make_node(
                "MultiHeadAttention", [q, k, v], [fin.output[0]], domain="com.microsoft",
                name=f"{sm.name or 'attn'}/MultiHeadAttention", num_heads=heads,
                scale=1.0 / math.sqrt(dim),
            )
            idx = list(g.node).index(fin)
            g.node.remove(fin)
            g.node.insert(idx, mha)
            self.fused += 1
        prune(self.model)
        return self.model


def prune(model) -> None:
    """Drop nodes whose outputs nothing reads (the attention subgraphs left behind)."""
    g = model.graph
    keep = {o.name for o in g.output}
    while True:
        used = keep | {i for n in g.node for i in n.input}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
