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


def check_compatible(data: "AuditData", input_shape: Sequence[int] | None, num_classes: int | None = None) -> None:
    """DataError (exit 3) if the data's sample shape, or (with ``num_classes``) its labels, do not fit the model."""
    from robaudit.data.load import check_compatible as _check

    _check(data, input_shape, num_classes)


def check_labels(data: "AuditData", num_classes: int) -> None:
    """DataError (exit 3) if a label is not a class id of a ``num_classes``-class model (or -1, unknown)."""
    from robaudit.data.load import check_labels as _check

    _check(data, num_classes)
