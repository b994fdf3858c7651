"""imgcls: class folders in; a trained, evaluated and deployable image classifier out."""

from imgcls.api import load, make_config, train
from imgcls.config import RunConfig

__all__ = ["RunConfig", "load", "make_config", "train"]
__version__ = "0.1.0"
