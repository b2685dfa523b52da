"""Shorten the exporters' GroupNorm: fold its per-channel affine into one op (``--optimize``).

Both ONNX exporters (legacy tracer and dynamo) write ``GroupNorm(G, C)`` as five nodes::

    x -> Reshape(0, G, -1) -> InstanceNormalization(scale=1, bias=0) -> Reshape(shape(x))
      -> Mul(gamma[C,1,1]) -> Add(beta[C,1,1])

(``[C,1]`` for the (N, C, H*W) input of diffusers' attention norm). A DDPM UNet has one
GroupNorm per ResNet half-block and attention, so the two full passes of Mul and Add over
every activation are a visible part of a CPU call. :class:`FuseGroupNormAffine` rewrites
each match exactly:

- ``C == G`` (one channel per group): the whole chain is ``InstanceNormalization(x, gamma,
  beta)``, no reshapes;
- otherwise ``Mul + Add`` become one ``BatchNormalization(scale=gamma, B=beta, mean=0, var=1,
  epsilon=0)``, i.e. ``gamma * y + beta`` in a single pass.

Every fused model is validated against torch like the rest of ``--optimize``; the speed
effect is measured in ``benchmarks/results/``.
"""

from __future__ import annotations

import numpy as np

from ddpm.export.fuse_attention import GraphRewrite, prune


class FuseGroupNormAffine(GraphRewrite):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.fused_instance = 0  # C == G: one InstanceNormalization
        self.fused_batchnorm = 0  # Mul + Add -> BatchNormalization

    def _sole(self, name: str, op: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def _match(self, norm):
        """(reshape_in, reshape_out, mul, add, gamma, beta, eps, groups) around ``norm``, or None."""
        r1 = self.producer.get(norm.input[0])
        if r1 is None or r1.op_type != "Reshape" or len(norm.input) < 3:
            return None
        r2 = self._sole(norm.output[0], "Reshape")
        mul = r2 and self._sole(r2.output[0], "Mul")
        add = mul and self._sole(mul.output[0], "Add")
        if add is None or mul.input[0] != r2.output[0] or add.input[0] != mul.output[0]:
            return None
        scale, bias = self._const(norm.input[1]), self._const(norm.input[2])
        gamma, beta = self._const(mul.input[1]), self._const(add.input[1])
        if any(a is None for a in (scale, bias, gamma, beta)):
            return None
        c = gamma.size
        if not (np.all(scale == 1) and np.all(bias == 0)) or beta.size != c:
            return None
        shape = gamma.shape[1:] if gamma.ndim >= 3 and gamma.shape[0] == 1 else gamma.shape
        if len(shape) < 2 or shape[0] != c or any(d != 1 for d in shape[1:]) or beta.shape != gamma.shape:
            return None  # per-channel only: (C, 1, ..., 1), as the exporter writes for (N, C, ...)
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        return r1, r2, mul, add, gamma.reshape(-1), beta.reshape(-1), eps, scale.size

    def apply(self):
        """Rewrite every match; returns the model (dead nodes and initializers pruned)."""
        import onnx.numpy_helper as nh
        from onnx import helper

        g = self.model.graph
        replace: dict[int, object] = {}  # id(node) -> new node taking its place
        drop: set[int] = set()
        for norm in [n for n in g.node if n.op_type == "InstanceNormalization"]:
            m = self._match(norm)
            if m is None:
                continue
            r1, r2, mul, add, gamma, beta, eps, groups = m
            base = f"{norm.name or 'groupnorm'}/affine"
            if gamma.size == groups:
                names = [f"{base}/scale", f"{base}/bias"]
                g.initializer.extend(
                    nh.from_array(a.astype(np.float32), n) for a, n in zip((gamma, beta), names, strict=True)
                )
                replace[id(norm)] = helper.make_node(
                    "InstanceNormalization", [r1.input[0], *names], [add.output[0]], name=base, epsilon=eps
                )
                drop |= {id(r2), id(mul), id(add)}
                self.fused_instance += 1
            else:
                c = gamma.size
                arrays = (gamma, beta, np.zeros(c), np.ones(c))
                names = [f"{base}/{k}" for k in ("scale", "bias", "mean", "var")]
                g.initializer.extend(
                    nh.from_array(a.astype(np.float32), n) for a, n in zip(arrays, names, strict=True)
                )
                replace[id(mul)] = helper.make_node(
                    "BatchNormalization", [mul.input[0], *names], [add.output[0]], name=base, epsilon=0.0
                )
                drop.add(id(add))
                self.fused_batchnorm += 1
        nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(nodes)
        prune(self.model)
        return self.model
