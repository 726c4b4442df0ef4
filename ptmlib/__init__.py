"""ptmlib: the small shared library of the executable curriculum on pretrained models.

Chapters use it as `import ptmlib as ptm`: `ptm.setup(...)` resolves the profile, `ptm.train(...)`
runs the book's one training loop, `ptm.Scorecard` records the claims.
"""
import warnings

from tqdm import TqdmWarning

warnings.filterwarnings("ignore", category=TqdmWarning)  # tqdm.auto without ipywidgets, imported by transformers

from ptmlib.claims import Claim, ClaimsFailed, Scorecard
from ptmlib.profiles import PROFILES, Profile, chapter, resolve_profile, seed_everything, setup
from ptmlib.train import History, TrainConfig, fit, lr_multiplier, train


SUBMODULES = ("data", "metrics", "models", "plots")  # `ptm.data.digits(...)`, imported on first use


def __getattr__(name: str):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"ptmlib.{name}")
    raise AttributeError(f"module 'ptmlib' has no attribute {name!r}")


def glue(name: str, value: object, fmt: str | None = None) -> None:
    """Store a value for the prose ({glue:text}`name`) without displaying it; a no-op outside myst-nb."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value if fmt is None else format(value, fmt), display=False)


__all__ = ["Claim", "ClaimsFailed", "chapter", "History", "PROFILES", "Profile", "Scorecard", "TrainConfig", "glue",
           "data", "fit", "lr_multiplier", "metrics", "models", "plots", "resolve_profile", "seed_everything", "setup", "train"]
