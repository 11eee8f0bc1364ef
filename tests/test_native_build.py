"""The native kernels must build wherever a C compiler exists.

tests/test_native.py skips itself when the kernels are unavailable (a machine
without a compiler falls back to the plain paths by design). On a machine with a
compiler, a failed build would otherwise turn ~250 kernel tests into skips and
leave CI green: this test is what goes red instead.
"""

from __future__ import annotations

import platform

import pytest

from convattn import fast
from convattn.fast import native


@pytest.mark.skipif(not fast.enabled(), reason="CONVATTN_FAST=0")
@pytest.mark.skipif(native._compiler() is None, reason="no C compiler: the plain paths are the expected ones")
@pytest.mark.skipif(platform.system() == "Windows", reason="the kernels are built with POSIX compilers only")
def test_kernels_build_where_a_compiler_exists():
    assert native.available(), f"native kernels did not build: {native.status()}"
