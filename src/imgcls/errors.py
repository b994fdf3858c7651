"""Errors that mean bad input, not a bug: the CLI prints them as one line, no traceback.

Set IMGCLS_DEBUG=1 to see the traceback anyway.
"""

from imgcls.config import ConfigError
from imgcls.data.images import ImageDecodeError
from imgcls.data.sources import DatasetError
from imgcls.models.backbones import WeightsError
from imgcls.models.heads import HeadSpecError
from imgcls.training.checkpoint import CheckpointError

# ValueError too: option checks (--freeze, --optimizer, ...) raise it with a message that
# names the flag and the accepted values.
USER_ERRORS = (ConfigError, DatasetError, HeadSpecError, WeightsError, CheckpointError, ImageDecodeError,
               ValueError, FileNotFoundError, PermissionError)
