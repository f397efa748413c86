"""Transfer metrics (neighbour agreement, linear probe), their budgets and the record of
which texts a run trained on."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.config import Budgets
from kdeploy.data import item_texts, seen_count, text_fingerprints
from kdeploy.evaluation.budgets import transfer_rows
from kdeploy.evaluation.transfer import fit_probe, neighbour_agreement, probe_accuracy


def _clustered(rng, n=300, d=16, clusters=30, spread=0.3):
    centres = rng.normal(size=(clusters, d))
    labels = rng.integers(0, clusters, size=n)
    return centres[labels] + spread * rng.normal(size=(n, d))


def test_neighbour_agreement_by_hand():
    # four points on a line (cosine on 2-d vectors at these angles): 0's nearest is 1,
    # 1's is 0 or 2 ... k=1 recall counts exact matches of the single nearest neighbour
    ang = np.array([0.0, 0.1, 0.3, 0.7])
    ref = np.stack([np.cos(ang), np.sin(ang)], 1)
    same = neighbour_agreement(ref, ref, k=1)
    assert same.recall_at_k == 1.0 and same.rank_spearman == pytest.approx(1.0)
    # move point 3 next to point 0: rows 0, 1 and 3 now see different nearest neighbours
    moved = ref.copy()
    moved[3] = [np.cos(-0.05), np.sin(-0.05)]
    got = neighbour_agreement(ref, moved, k=1)
    # nearest under ref: 0->1, 1->0, 2->1, 3->2; under moved: 0->3, 1->0, 2->1, 3->0
    assert got.recall_at_k == pytest.approx(2 / 4)
    assert got.pool == 4 and got.k == 1


def test_neighbour_agreement_falls_with_noise_and_reaches_chance_when_shuffled():
    rng = np.random.default_rng(0)
    ref = _clustered(rng)
    scores = [
        neighbour_agreement(ref, ref + s * rng.normal(size=ref.shape), k=10).recall_at_k
        for s in (0.01, 0.1, 0.3)
    ]
    assert scores[0] > 0.95 and scores[0] > scores[1] > scores[2]
    shuffled = neighbour_agreement(ref, ref[rng.permutation(len(ref))], k=10)
    assert shuffled.recall_at_k < 0.1  # chance is about k / n = 0.03
    assert abs(shuffled.rank_spearman) < 0.1


def test_neighbour_agreement_ignores_scale_and_refuses_bad_shapes():
    rng = np.random.default_rng(1)
    ref = _clustered(rng, n=50)
    assert neighbour_agreement(ref, 3.0 * ref, k=5).recall_at_k == 1.0
    with pytest.raises(ValueError, match="reference rows"):
        neighbour_agreement(ref, ref[:-1])
    with pytest.raises(ValueError, match="more than k"):
        neighbour_agreement(ref[:5], ref[:5], k=5)


def test_probe_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 12)) * rng.uniform(0.1, 3.0, size=12)
    w = rng.normal(size=12)
    y = (x @ w + 0.5 * rng.normal(size=400) > 0).astype(int)
    mine = fit_probe(x, y, c=0.5)
    z = (x - x.mean(0)) / x.std(0)
    ref = sklearn.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(z, y)
    np.testing.assert_allclose(mine.weights[0], ref.coef_[0], atol=1e-4)
    assert mine.bias[0] == pytest.approx(ref.intercept_[0], abs=1e-4)
    assert (mine.predict(x) == ref.predict(z)).all()


def test_probe_multiclass_is_one_vs_rest_like_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    multiclass = pytest.importorskip("sklearn.multiclass")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    y = np.argmax(x[:, :3] + 0.3 * rng.normal(size=(300, 3)), axis=1)
    mine = fit_probe(x, y)
    z = (x - x.mean(0)) / x.std(0)
    ref = multiclass.OneVsRestClassifier(
        sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
    ).fit(z, y)
    np.testing.assert_allclose(
        mine.weights, np.stack([e.coef_[0] for e in ref.estimators_]), atol=1e-4
    )
    assert (mine.predict(x) == ref.predict(z)).mean() == 1.0


def test_probe_accuracy_learns_signal_and_not_noise():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 10))
    y = (x[:, 0] > 0).astype(int)
    assert probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = rng.integers(0, 2, size=600)
    assert abs(probe_accuracy(x[:400], noise[:400], x[400:], noise[400:]) - 0.5) < 0.12
    with pytest.raises(ValueError, match="two classes"):
        fit_probe(x, np.zeros(600, dtype=int))


def test_text_fingerprints_tell_seen_from_unseen():
    train = ["a man plays a guitar .", "  a dog runs  ", ""]
    fp = text_fingerprints(train)
    assert len(fp) == 2 and fp.dtype == np.uint64 and (np.diff(fp.astype(np.float64)) > 0).all()
    assert seen_count(["a dog runs", "a cat sleeps", "a man plays a guitar ."], fp) == 2
    assert seen_count(["a cat sleeps"], fp) == 0
    assert item_texts([("a", "b", None), ("c", None, 1)]) == ["a", "c", "b"]


def _transfer(recall, probe_ret, *, int8_recall=0.8):
    return {
        "applicable": True,
        "models": {
            "teacher_fp32": {"neighbour_recall": 1.0, "probe_retention": 1.0},
            "teacher_int8": {"neighbour_recall": int8_recall, "probe_retention": 0.98},
            "student_int8": {"neighbour_recall": recall, "probe_retention": probe_ret},
        },
    }


def test_transfer_budgets_pass_fail_and_unmeasured():
    b = Budgets.model_validate(
        {
            "min_neighbour_recall": {"over": "teacher_int8", "ratio": 1.0},
            "min_probe_retention": 0.99,
        }
    )
    rows = {r["name"]: r for r in transfer_rows(b, _transfer(0.81, 0.995), "student_int8")}
    assert rows["min_neighbour_recall"]["passed"] and rows["min_probe_retention"]["passed"]
    assert rows["min_neighbour_recall"]["limit"] == pytest.approx(0.8)
    rows = {r["name"]: r for r in transfer_rows(b, _transfer(0.79, 0.985), "student_int8")}
    assert not rows["min_neighbour_recall"]["passed"]
    assert not rows["min_probe_retention"]["passed"]
    # an absolute floor: recall against teacher_fp32, whose own recall is 1
    floor = Budgets.model_validate({"min_neighbour_recall": {"over": "teacher_fp32", "ratio": 0.7}})
    (row,) = transfer_rows(floor, _transfer(0.69, 1.0), "student_int8")
    assert row["limit"] == pytest.approx(0.7) and not row["passed"]
    # not measured fails and says so; a classifier has nothing to check
    unmeasured = _transfer(0.9, 1.0)
    del unmeasured["models"]["student_int8"]["probe_retention"]
    rows = {r["name"]: r for r in transfer_rows(b, unmeasured, "student_int8")}
    assert not rows["min_probe_retention"]["passed"]
    assert "not measured" in rows["min_probe_retention"]["detail"]
    assert transfer_rows(b, {"applicable": False, "reason": "a classifier"}, "student_int8") == []
