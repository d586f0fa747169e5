"""Test-session settings shared by every test file."""

from __future__ import annotations

import os
import tempfile

# Kernel decisions (model/kernels.py) are cached per machine; a test run keeps its own cache so it neither
# reads a user's decisions nor leaves files in their home. Subprocesses (the CLI tests) inherit it.
os.environ.setdefault(
    "GPT2KIT_KERNEL_CACHE", os.path.join(tempfile.mkdtemp(prefix="gpt2kit-test-"), "kernels.json")
)
