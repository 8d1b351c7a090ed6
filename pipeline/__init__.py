"""A k-fold pipeline for Kaggle image competitions: folds -> runs -> stacking -> submissions -> dist."""

__version__ = "0.1.0"
