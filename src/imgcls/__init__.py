"""imgcls: class folders in; a trained, evaluated and deployable image classifier out."""

from imgcls._version import __version__
from imgcls.api import evaluate, load, make_config, report, show_confusion, show_predictions, show_samples, train
from imgcls.config import RunConfig

__all__ = ["RunConfig", "__version__", "evaluate", "load", "make_config", "report", "show_confusion",
           "show_predictions", "show_samples", "train"]
