"""The CUDA tests' shared marks, in the style of MONAI's ``SkipIfNoModule`` / ``skip_if_no_cuda``.

``pytest -m gpu`` selects the tests marked with :data:`GPU`; on a machine
without CUDA they are skipped with the reason, so the CPU suite stays green.
"""

from __future__ import annotations

import pytest
import torch

__all__ = ["requires_cuda", "GPU"]

#: skip unless a CUDA device is present.
requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (these tests run with `pytest -m gpu` on a GPU machine)"
)
#: a GPU test: selected by ``-m gpu``, skipped without CUDA (``pytestmark = GPU`` or ``@pytest.mark.gpu`` + ``@requires_cuda``).
GPU = [pytest.mark.gpu, requires_cuda]
