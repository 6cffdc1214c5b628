"""TinyMem: build, train, evaluate and mitigate memorization in small language models.

The library layer. It never imports ray, optuna or mlflow (see DESIGN.md, "Layers"), so every piece is
usable alone from a notebook: build data, train, mitigate, evaluate.
"""

__version__ = "0.1.0"
