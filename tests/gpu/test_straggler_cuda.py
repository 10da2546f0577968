"""The straggler rule on one GPU: four gloo ranks share the card, each times its compute with CUDA events,
rank 2's compute carries a 60 ms kernel more from step 12; the daemon names rank 2."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.consumer.conftest import daemons, ipc_endpoint, cli  # noqa: E402,F401
from tests.consumer.analysis.test_straggler import assert_names_the_slow_rank, run_ranks  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_four_ranks_on_one_gpu_name_the_slow_rank(tmp_path: Path, daemons, ipc_endpoint, cli) -> None:  # noqa: F811
    assert_names_the_slow_rank(run_ranks(tmp_path, daemons, ipc_endpoint, cli, "cuda"))
