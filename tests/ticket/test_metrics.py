import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score  # test oracle only; the core does not depend on it

from ticket.metrics import roc_auc


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=60))
def test_roc_auc_matches_scikit_learn_including_ties(pairs: list[tuple[int, bool]]) -> None:
    scores = np.array([p[0] for p in pairs], dtype=np.float64) / 6  # few values: many ties
    labels = np.array([p[1] for p in pairs])
    ours = roc_auc(scores, labels)
    if labels.all() or not labels.any():
        assert ours is None
    else:
        assert ours is not None
        assert abs(ours - roc_auc_score(labels, scores)) < 1e-12


def test_roc_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
