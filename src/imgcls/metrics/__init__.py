"""Metrics as plain functions of labels and scores (numpy, scikit-learn), shared by training
and evaluation: one top-k with one tie rule, one ECE, hierarchy and open-set metrics."""

from imgcls.metrics.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from imgcls.metrics.classification import classification_metrics, format_metrics_table, topk_accuracy, write_metrics

__all__ = ["ECE_BINS", "classification_metrics", "expected_calibration_error", "format_metrics_table",
           "reliability_bins", "topk_accuracy", "write_metrics"]
