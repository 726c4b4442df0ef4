"""Every fourth chapter (part c) at full on the CPU at a tiny budget: see tests/full_profile.py."""
import pytest

from full_profile import chapters, run_full_tiny


@pytest.mark.slow
@pytest.mark.parametrize("chapter", chapters(2))
def test_full_profile_runs_to_its_scorecard(chapter, tmp_path):
    run_full_tiny(chapter, tmp_path)
