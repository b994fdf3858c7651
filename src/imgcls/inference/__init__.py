"""The inference core: model files and cards, backends, the classifier, predictions and the
open-set rule. It sits above ``models`` and below ``training``: training validates with
:func:`~imgcls.inference.predictions.predict_loader` and writes model files with
:mod:`~imgcls.inference.artifact`; evaluation and deployment use the classifier."""

from imgcls.inference.card import ModelCard
from imgcls.inference.classifier import Classifier
from imgcls.inference.loading import load
from imgcls.inference.predictions import Predictions

__all__ = ["Classifier", "ModelCard", "Predictions", "load"]
