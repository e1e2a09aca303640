"""Model loading and adaptation (see :mod:`robaudit.models.load`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.models.adapt import LoadedModel


def load_model(path: str | None, **kwargs: Any) -> "LoadedModel":
    """Load and adapt a model file; ``None`` loads the embedded sample LeNet.

    See :func:`robaudit.models.load.load_model` for the arguments.
    """
    from robaudit.models.load import load_model as _load

    return _load(path, **kwargs)
