"""Every reproduction fails under each control its chapter declares, part a of the cases: see tests/control_runs.py."""
import pytest

from control_runs import cases, run_control


@pytest.mark.slow
@pytest.mark.parametrize("chapter,control", cases(0))
def test_every_reproduction_fails_under_each_control(chapter, control, tmp_path):
    run_control(chapter, control, tmp_path)
