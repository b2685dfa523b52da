"""Build hook for the optional C Philox core; all package metadata lives in pyproject.toml.

``optional=True``: when the extension cannot be compiled (no compiler, unsupported
platform) the install still succeeds and ``ddpm.noise`` uses its numpy path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ddpm._philox",
            ["ddpm/_philox.c"],
            optional=True,
            # No fast-math, no FMA contraction: uniform_pair must stay bit-identical to numpy.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
        )
    ]
)
