"""The ensemble stage's memory savings change no result: nested CV on rows moved in place (fold_rows), the best
blend's outputs in a temporary file (spill), the rank blend summed in place, tables written in row groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.artifacts.tables import read_table, write_table
from pipeline.blend import blends, simple
from pipeline.blend import ensemble as ens
from pipeline.blend.base import blend_output
from pipeline.core.config import Competition


def _stacked(rng, n: int, C: int, M: int):
    """(X, y) for M noisy models of n rows, float32 as the level-1 tables are."""
    y = rng.integers(0, C, n)
    logits = rng.normal(size=(M, n, C))
    logits[:, np.arange(n), y] += rng.uniform(0.5, 2.5, size=(M, 1))
    p = np.exp(logits)
    return blends.stack((p / p.sum(axis=2, keepdims=True)).astype(np.float32)), y


def _copying_nested_cv(estimator, X, y, fold):
    """nested_cv as it was: each fold's training and held-out rows as copies, X[~held] and X[held]."""
    oof, learners = None, []
    for k in np.unique(fold):
        held = fold == k
        est = clone(estimator).fit(X[~held], y[~held])
        p = blend_output(est, X[held])
        oof = np.zeros((len(X), p.shape[1]), dtype=p.dtype) if oof is None else oof
        oof[held] = p
        learners.append(est)
    return oof, learners


@pytest.mark.parametrize("name", ["weights", "weights_scipy", "lgbm", "logreg", "mean+thr"])
def test_nested_cv_on_rows_moved_in_place_matches_the_copies_exactly(name, monkeypatch):
    rng = np.random.default_rng(0)
    X, y = _stacked(rng, 150, 4, 3)
    fold = rng.integers(0, 3, len(y))  # folds interleaved, as a shuffled k-fold leaves them
    X_before = X.copy()
    task, metric = ("ordinal", "qwk") if "thr" in name else ("multiclass", "logloss")
    est = blends.make_blend(name, task, 4, metric)
    oof, learners = ens.nested_cv(est, X, y, fold)
    expected, expected_learners = _copying_nested_cv(est, X_before.copy(), y, fold)
    assert np.array_equal(X, X_before)  # the rows are back where they were
    assert np.array_equal(oof, expected)
    X_test = _stacked(rng, 20, 4, 3)[0]
    assert np.array_equal(blends.combine_tests(learners, X_test, task),
                          blends.combine_tests(expected_learners, X_test, task))


def test_fold_rows_gives_the_fold_rows_in_order_and_puts_them_back_after_an_error():
    rng = np.random.default_rng(1)
    X = rng.random((37, 5)).astype(np.float32)
    held = rng.random(37) < 0.4
    X_before = X.copy()
    with pytest.raises(KeyError):
        with ens.fold_rows(X, held) as (train, test):
            assert np.array_equal(train, X_before[~held]) and np.array_equal(test, X_before[held])
            assert np.shares_memory(train, X) and np.shares_memory(test, X)  # views, not copies
            raise KeyError("a blend failed")
    assert np.array_equal(X, X_before)
    X.flags.writeable = False  # an array it may not write to: copies
    with ens.fold_rows(X, held) as (train, test):
        assert np.array_equal(train, X_before[~held]) and not np.shares_memory(train, X)


def test_permute_rows_applies_any_permutation_in_place():
    rng = np.random.default_rng(2)
    for n in (1, 2, 9, 64):
        X = rng.random((n, 3))
        order = rng.permutation(n)
        expected = X[order]
        ens.permute_rows(X, order)
        assert np.array_equal(X, expected)


def test_the_best_blend_kept_in_a_file_scores_and_writes_the_same(monkeypatch):
    rng = np.random.default_rng(3)
    X, y = _stacked(rng, 90, 3, 3)
    X_test = _stacked(rng, 15, 3, 3)[0]
    fold = np.arange(90) % 3
    comp = Competition(data_dir=".", target="label", task="multiclass", metric="logloss")
    names = ["mean", "weights", "logreg"]
    in_memory, _ = ens.score_blends(names, "auto", comp, 3, X, y, fold, X_test, None)
    monkeypatch.setattr(ens, "SPILL_BYTES", 0)
    spilled, _ = ens.score_blends(names, "auto", comp, 3, X, y, fold, X_test, None)
    kept = [b for b in spilled if b.oof is not None]
    assert len(kept) == 1 and isinstance(kept[0].oof, np.memmap)
    expected = next(b for b in in_memory if b.oof is not None)
    assert kept[0].name == expected.name
    assert np.array_equal(kept[0].oof, expected.oof) and np.array_equal(kept[0].test, expected.test)
    assert [b.cv for b in spilled] == [b.cv for b in in_memory]


def test_spill_keeps_values_and_small_arrays_as_they_are(monkeypatch):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert ens.spill(a) is a
    monkeypatch.setattr(ens, "SPILL_BYTES", 0)
    b = ens.spill(a)
    assert isinstance(b, np.memmap) and np.array_equal(a, b) and b.dtype == a.dtype


def test_rank_summed_in_place_matches_the_mean_of_each_models_ranks(monkeypatch):
    monkeypatch.setattr(simple, "RANK_CHUNK_CELLS", 7)
    rng = np.random.default_rng(4)
    P = np.round(rng.random((3, 40, 6)), 1).astype(np.float32)  # ties
    ranks = [simple._scaled_ranks(p) for p in P]  # each model's ranks on its own
    total = ranks[0].copy()
    for r in ranks[1:]:
        total += r
    total /= 3
    expected = total / total.sum(axis=1, keepdims=True, dtype=np.float64)
    assert np.allclose(simple.blend_rank(P, "multiclass"), expected, atol=1e-7)


def test_a_table_written_in_row_groups_reads_back_the_same(tmp_path, monkeypatch):
    import pipeline.artifacts.tables as tables
    import pyarrow.parquet as pq

    monkeypatch.setattr(tables, "ROW_GROUP_CELLS", 20)
    rng = np.random.default_rng(5)
    proba = rng.dirichlet(np.ones(4), size=23).astype(np.float32)
    ids = [f"r{i}" for i in range(23)]
    path = write_table(tmp_path / "m.oof.parquet", ids, proba, ["a", "b", "c", "d"], "image_id")
    assert pq.ParquetFile(path).num_row_groups == 5
    back = read_table(path, "image_id", ["a", "b", "c", "d"], ids, task="multiclass")
    assert np.array_equal(back.to_numpy(), proba) and list(back.index) == ids
    empty = write_table(tmp_path / "e.oof.parquet", [], np.zeros((0, 4), np.float32), ["a", "b", "c", "d"], "image_id")
    assert pd.read_parquet(empty).shape == (0, 5)
