"""robaudit: robustness auditor for trained image classifiers.

The public API is small on purpose: load a model, load data, run analyses.
Heavy modules (torch) are imported lazily so that ``robaudit --help`` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
