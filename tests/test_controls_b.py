"""Every reproduction fails under each control its chapter declares, part b of the cases: see tests/control_runs.py."""
import pytest

from control_runs import cases, run_control


@pytest.mark.slow
@pytest.mark.parametrize("chapter,control", cases(1))
def test_every_reproduction_fails_under_each_control(chapter, control, tmp_path):
    run_control(chapter, control, tmp_path)
