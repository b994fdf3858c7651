"""The package version, at the bottom of the layers so that model cards can record it."""

__version__ = "0.2.0"
