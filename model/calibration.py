"""The calibrated probability that a pair is a duplicate, from its cosine similarity.

Platt scaling: ``P(duplicate) = sigmoid(slope * s + intercept)``, with the two numbers fitted on
held-out labelled pairs by :func:`model.training.metrics.fit_logistic` and stored in the model
directory's ``config.json``. A positive slope keeps the probability monotonic in ``s``.
"""

from __future__ import annotations

import numpy as np


def probability(similarities: np.ndarray | float, slope: float, intercept: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(slope * np.asarray(similarities, dtype=np.float64) + intercept)))
