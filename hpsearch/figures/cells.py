"""How a report writes one value, the same on the terminal and in the HTML page."""

from __future__ import annotations

from hpsearch.figures.summary import Row


def fmt(value) -> str:
    """A hyperparameter: four significant digits for floats (learning rates span decades)."""
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def accuracy(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def epochs(row: Row) -> str:
    """Epochs trained, out of the trial's budget."""
    if row.epochs is None:
        return ""
    return f"{row.epochs}/{row.budget}" if row.budget is not None else str(row.epochs)


def worst(kept: dict | None) -> str:
    """The worst class (user attr `worst_class`): its name and accuracy."""
    return f"{kept['class']}: {kept['accuracy']:.4f}" if kept else ""
