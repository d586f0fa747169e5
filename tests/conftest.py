"""Test-session settings shared by every test file."""

from __future__ import annotations

import os
import tempfile

# Kernel decisions (model/kernels.py) are cached per machine; a test run keeps its own cache so it neither
# reads a user's decisions nor leaves files in their home. Subprocesses (the CLI tests) inherit it.
os.environ.setdefault(
    "GPT2KIT_KERNEL_CACHE", os.path.join(tempfile.mkdtemp(prefix="gpt2kit-test-"), "kernels.json")
)


import pytest  # noqa: E402 - after the environment above, which imports must see
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _onednn_switch_restored():
    """torch switches oneDNN off for the rest of the process when one of its bf16 products fails ("mkldnn_matmul
    failed, switching to BLAS gemm": a bf16 autocast forward on a CPU without native bf16, seen on an emulated
    Neoverse N1), and gpt2kit's float32 products then run torch's kernels. A test that trips it must not
    change the kernels of the tests after it."""
    before = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = before
