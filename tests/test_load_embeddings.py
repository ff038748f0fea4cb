"""load_embeddings: the streamed read returns what FiftyOne stored, in FiftyOne's order, and
names a sample whose vector does not fit the others."""

from __future__ import annotations

import numpy as np
import pytest

from curation.embeddings import load_embeddings
from curation.errors import CurationInputError


def _dataset(name: str, vectors: list):
    import fiftyone as fo

    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=f"/data/{index}.png", emb=vector) for index, vector in enumerate(vectors)])
    return dataset


def test_the_streamed_read_matches_fiftyone_values_and_skips_samples_without_a_vector(fresh_name):
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(16).astype(np.float32) for _ in range(30)]
    vectors[7] = None
    dataset = _dataset(fresh_name, vectors)
    ids, matrix = load_embeddings(dataset, "emb")
    expected_ids, expected = dataset.exists("emb").values(["id", "emb"])
    assert ids == expected_ids and len(ids) == 29
    assert matrix.dtype == np.float32 and matrix.shape == (29, 16)
    np.testing.assert_array_equal(matrix, np.stack(expected))
    # a view reads only its own samples
    view_ids, view_matrix = load_embeddings(dataset.skip(10).limit(5), "emb")
    assert view_ids == dataset.skip(10).limit(5).values("id") and view_matrix.shape == (5, 16)


def test_a_vector_of_another_length_is_named(fresh_name):
    dataset = _dataset(fresh_name, [np.ones(8, dtype=np.float32), np.ones(8, dtype=np.float32),
                                    np.ones(5, dtype=np.float32)])
    odd = dataset.values("id")[2]
    with pytest.raises(CurationInputError, match=f"sample {odd} holds a vector of 5 values, expected 8"):
        load_embeddings(dataset, "emb")


def test_no_vectors_is_an_empty_matrix(fresh_name):
    import fiftyone as fo

    dataset = _dataset(fresh_name, [None, None])
    dataset.add_sample_field("emb", fo.VectorField)
    assert load_embeddings(dataset, "emb")[0] == [] and load_embeddings(dataset, "emb")[1].shape == (0, 0)
