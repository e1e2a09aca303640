"""Data loading: standard datasets on disk, tensor files, image folders, the embedded sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from robaudit.data.types import AuditData


def load_data(spec: str | None, **kwargs: Any) -> "AuditData":
    """Load a dataset by name or path; ``None`` loads the embedded Fashion-MNIST sample.

    See :func:`robaudit.data.load.load_data` for the arguments.
    """
    from robaudit.data.load import load_data as _load

    return _load(spec, **kwargs)


def check_compatible(data: "AuditData", input_shape: Sequence[int]) -> None:
    """DataError (exit 3) if the data's sample shape does not fit the model's input shape."""
    from robaudit.data.load import check_compatible as _check

    _check(data, input_shape)
