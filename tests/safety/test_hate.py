import hashlib
import time

import numpy as np
import pytest

from changjak.errors import ConfigError, DataError
from changjak.safety import embed, train_hate
from changjak.safety.embed import EMBED_FILE, HashingEmbedder
from changjak.safety.hate import CARD_FILE, MODEL_FILE, HateClassifier, ensure_model, features
from tests.safety.conftest import BEEP


def test_training_writes_a_model_and_its_card(model_dir, data_dir):
    card = HateClassifier.load(model_dir).card
    assert "CC BY-SA 4.0" in card["licence"]
    train_file = data_dir / train_hate.BEEP_DIR / "train.tsv"
    assert card["data"]["train"]["sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert card["data"]["train"]["rows"] == 7896
    assert 0.0 < card["threshold"] < 1.0
    assert card["dev_metrics"]["fpr"] <= 0.05  # the threshold rule, checked on dev
    assert card["dev_metrics"]["auc"] >= 0.85  # measured 0.877


def test_scores_follow_the_labels_on_dev(model_dir):
    clf = HateClassifier.load(model_dir)
    texts, labels = train_hate.load_beep(BEEP / "dev.tsv")
    scores = np.array([clf.score(t) for t in texts])
    assert scores[labels].mean() > scores[~labels].mean() + 0.2
    assert clf.predict("이 병신 같은 새끼들 다 죽어버려라")
    assert not clf.predict("오늘 날씨가 정말 좋네요. 산책 가야겠어요")


def test_numpy_scoring_matches_scikit_learn(data_dir, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_hate.train(data_dir, tmp_path, limit=800)
    clf = HateClassifier.load(tmp_path)
    texts, labels = train_hate.load_beep(BEEP / "train.tsv", limit=800)
    vectorizer = TfidfVectorizer(analyzer=lambda g: g, min_df=train_hate.MIN_DF, sublinear_tf=True)
    model = LogisticRegression(C=train_hate.C, class_weight="balanced", max_iter=3000)
    model.fit(vectorizer.fit_transform([features(t) for t in texts]), labels)
    probe, _ = train_hate.load_beep(BEEP / "dev.tsv")
    expected = model.decision_function(vectorizer.transform([features(t) for t in probe[:100]]))
    ours = np.array([clf.decision(t) for t in probe[:100]])
    np.testing.assert_allclose(ours, expected, atol=1e-4)  # the saved weights are float32


def test_ensure_model_trains_only_when_missing(data_dir, tmp_path, monkeypatch):
    calls = []
    real_train = train_hate.train
    monkeypatch.setattr(train_hate, "train", lambda d, o, embedder, **kw: calls.append((o, embedder))
                        or real_train(d, o, limit=500, embedder=embedder, **kw))
    out = ensure_model(data_dir, tmp_path / "hate")
    assert (out / MODEL_FILE).is_file() and (out / CARD_FILE).is_file()
    ensure_model(data_dir, out)
    assert calls == [(tmp_path / "hate", None)]
    ensure_model(data_dir, out, embed="hashing")  # asking for the stage retrains once
    ensure_model(data_dir, out, embed="hashing")
    assert len(calls) == 2 and isinstance(calls[1][1], HashingEmbedder) and (out / EMBED_FILE).is_file()


def test_main_runs_from_the_command_line(data_dir, tmp_path, capsys):
    card = train_hate.main(["--data", str(data_dir), "--out", str(tmp_path), "--limit", "600", "--max-fpr", "0.1"])
    assert card["data"]["train"]["rows"] == 600
    assert card["dev_metrics"]["fpr"] <= 0.1
    assert "saved" in capsys.readouterr().out


def test_pick_threshold_keeps_the_false_positive_rate():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.6, 0.7, 0.8, 0.95])
    labels = np.array([False] * 5 + [True] * 5)
    threshold = train_hate.pick_threshold(scores, labels, max_fpr=0.2)  # one of five negatives may pass
    assert (scores[~labels] >= threshold).mean() == 0.2
    assert threshold == np.nextafter(0.4, np.inf)  # any lower would flag 0.4 too
    assert (scores[labels] >= threshold).all()
    assert train_hate.pick_threshold(scores, labels, max_fpr=0.0) == np.nextafter(0.9, np.inf)


def test_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="no hate-speech model"):
        HateClassifier.load(tmp_path)
    with pytest.raises(DataError, match="not found"):
        train_hate.load_beep(tmp_path / "train.tsv")
    (tmp_path / "bad.tsv").write_text("text\tlabel\nhello\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match="columns"):
        train_hate.load_beep(tmp_path / "bad.tsv")
    with pytest.raises(ConfigError, match="max_fpr"):
        train_hate.train(tmp_path, tmp_path, max_fpr=1.5)


def test_500_characters_score_in_about_a_millisecond(model_dir):
    clf = HateClassifier.load(model_dir)
    prompts = [("주인공은 비 내리는 골목에서 오래된 편지를 발견했다. 형사는 말이 없었다. " * 12)[i:i + 500] for i in range(50)]
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        clf.score(prompt)
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.01  # measured ~1.5 ms with normalising; room for a busy CI core


class CountingEmbedder(HashingEmbedder):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return super().embed(texts)


def test_embedding_stage_is_fitted_on_train_and_tuned_on_dev(data_dir, tmp_path, monkeypatch):
    card = train_hate.train(data_dir, tmp_path, limit=1500, embedder=HashingEmbedder())
    assert card["embedding"]["embedder"] == "hashing"
    assert 0.0 <= card["embedding"]["ngram_weight"] <= 1.0
    best = max(card["embedding"]["dev_auc_by_ngram_weight"].values())
    assert card["embedding"]["dev_auc_by_ngram_weight"][f"{card['embedding']['ngram_weight']:.1f}"] == best
    assert card["dev_metrics"]["fpr"] <= 0.05 and "dev_metrics_ngram_alone" in card
    low, high = card["cascade"]["ngram_band"]
    assert low <= high and 0.0 < card["cascade"]["dev_share_in_band"] < 1.0
    monkeypatch.setitem(embed.EMBEDDERS, "hashing", CountingEmbedder)  # load() builds the embedder the card names
    clf = HateClassifier.load(tmp_path)
    assert isinstance(clf.stage.embedder, CountingEmbedder)
    texts, _ = train_hate.load_beep(BEEP / "dev.tsv")
    full = [clf.score(t) >= clf.threshold for t in texts]
    clf.stage.embedder.texts = 0
    cascade = [clf.predict(t) for t in texts]
    margins = np.array([clf.ngram_decision(t) for t in texts])
    assert clf.stage.embedder.texts == ((margins >= low) & (margins <= high)).sum()  # only the band is embedded
    agreement = np.mean(np.array(full) == np.array(cascade))
    assert agreement == pytest.approx(card["cascade"]["dev_agreement"], abs=1e-4)
    assert agreement >= 0.97  # at most BAND_TAIL of each side decided by the n-gram alone


def test_scores_mix_both_stages(data_dir, tmp_path):
    train_hate.train(data_dir, tmp_path, limit=800, embedder=HashingEmbedder())
    clf = HateClassifier.load(tmp_path, embedder=HashingEmbedder())
    text = "여자는 집에서 애나 봐라"
    head = clf.stage.embedder.embed([text])[0] @ clf.stage.coef + clf.stage.bias
    w = clf.stage.weight
    assert clf.decision(text) == pytest.approx(w * clf.ngram_decision(text) + (1 - w) * head, abs=1e-9)
