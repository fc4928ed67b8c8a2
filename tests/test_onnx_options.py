"""ONNX Runtime's threads spin within a run and, unless asked, stop when it ends (onnx_options.py)."""

from __future__ import annotations

import pytest

from services.common.onnx_options import SPINNING_ENTRY, STOP_SPINNING_AFTER_RUN_ENTRY, session_options


@pytest.mark.parametrize(("spin_between_runs", "stop_after_run"), [(False, "1"), (True, "0")])
def test_threads_spin_within_a_run_and_between_runs_only_if_asked(
    spin_between_runs: bool, stop_after_run: str
) -> None:
    options = session_options(intra_op_threads=2, spin_between_runs=spin_between_runs)

    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry(SPINNING_ENTRY) == "1"
    assert options.get_session_config_entry(STOP_SPINNING_AFTER_RUN_ENTRY) == stop_after_run
