"""Serve whole sampling on NVIDIA Triton Inference Server.

- :mod:`ddpm.serve.requests`: the ``ddpm_sampler`` request schema and its validation, shared by
  every serving path (one place decides what a bad request is and what it is told).
- :mod:`ddpm.serve.repository`: writes the ``ddpm_sampler`` Python-backend model
  (``config.pbtxt`` + a ``model.py`` shim); ``ddpm-export --triton-repo`` and ``ddpm-serve``
  both use it.
- :mod:`ddpm.serve.triton_model`: the ``TritonPythonModel`` that runs :class:`ddpm.runtime.Sampler`
  inside Triton's Python-backend stub.
- :mod:`ddpm.serve.launch`: starts the ``tritonserver`` binary bundled in ``nvidia-pytriton``
  with the environment its Python-backend stub needs.
- :mod:`ddpm.serve.server`: the ``ddpm-serve`` command.

Nothing here imports Triton, onnxruntime or torch at module level.
"""
