"""changjak export --format gguf --quant q8_0 [--model-uri models:/changjak-writer@champion] [--out DIR]

Turns a registered LoRA version into a model that runs without PEFT, and registers it as a new
version of the same model:

1. resolve the version and the exact base it was trained on (sha256-checked);
2. merge the adapter into the base (PEFT ``merge_and_unload``) and write safetensors + tokenizer
   to ``DIR/merged`` (``--format merged --quant f16`` writes them in float16);
3. ``--format gguf``: convert with llama.cpp's ``convert_hf_to_gguf.py`` to ``model-f16.gguf``, then
   quantise with llama.cpp's quantize API to ``model-q8_0.gguf`` / ``model-q4_k_m.gguf``;
4. perplexity on a sample of the test split: the merged model (transformers, fp32) is the
   reference, the exported file is measured with the engine that will serve it;
5. log an ``export`` run and register ``DIR/version`` (the adapter, for lineage and the
   transformers backend, plus the exported model) with tags ``format``, ``quantization``,
   ``perplexity``, ``perplexity_reference``, ``perplexity_delta`` and ``exported_from``. It gets no
   alias: ``changjak promote --version N`` makes it the champion; ``changjak serve --backend
   llamacpp`` then loads its GGUF.

Default DIR: ``<home>/exports/<name>-v<version>-<format>-<quant>``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from tqdm import tqdm

from changjak import base_model, registry, tracking
from changjak.data import manifest
from changjak.errors import BackendError, ConfigError, DataError

if TYPE_CHECKING:
    from changjak.settings import Settings

FORMATS = ("merged", "gguf")
QUANTS = ("f16", "q8_0", "q4_k_m")
FTYPES = {"q8_0": 7, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_K_M
console = Console()


@dataclass
class ExportResult:
    out_dir: Path
    model_path: Path  # the merged directory or the GGUF file
    perplexity: dict[str, float] = field(default_factory=dict)  # reference, exported, delta
    version: str | None = None  # the registered version, when registered


def main(settings: Settings, *, fmt: str = "gguf", quant: str | None = None, model_uri: str | None = None,
         out: Path | None = None, register: bool = True, samples: int = 16) -> ExportResult:
    """Export the version ``model_uri`` (default: ``serve.model_uri``) and register the result."""
    quant = quant or ("q8_0" if fmt == "gguf" else None)
    if fmt not in FORMATS or (quant is not None and quant not in QUANTS):
        raise ConfigError(f"--format {fmt} --quant {quant}: use a format of {FORMATS} and a quant of {QUANTS}")
    if fmt == "merged" and quant not in (None, "f16"):
        raise ConfigError(f"--format merged keeps float weights; --quant {quant} needs --format gguf")
    resolved = registry.resolve(settings, model_uri or settings.serve.model_uri)
    base = base_model.resolve(settings, source=resolved.base_source, expected_sha256=resolved.base_sha256)
    label = quant or "float"
    out = Path(out or settings.home / "exports" / f"{resolved.name}-v{resolved.version}-{fmt}-{label}")
    out.mkdir(parents=True, exist_ok=True)

    console.print(f"merging {resolved.name} v{resolved.version} into {base.source}")
    model, tokenizer = merge(base.path, resolved.adapter_dir, out / "merged", float16=quant == "f16" and fmt == "merged")
    texts = sample_texts(settings, tokenizer, samples)
    reference = torch_perplexity(model, tokenizer, texts, "reference (merged, fp32)")
    del model
    if fmt == "gguf":
        model_path = convert(out / "merged", out / "model-f16.gguf")
        if quant != "f16":
            model_path = quantize(model_path, out / f"model-{quant}.gguf", quant)
        exported = gguf_perplexity(model_path, texts)
    else:
        model_path = out / "merged"
        exported = reference if quant is None else torch_perplexity_of(model_path, texts)
    result = ExportResult(out, model_path, {"reference": reference, "exported": exported,
                                            "delta": exported - reference})
    console.print(f"perplexity: reference {reference:.4f}, exported {exported:.4f} "
                  f"(delta {exported - reference:+.4f}) on {len(texts)} test records")
    if register:
        result.version = register_export(settings, resolved, fmt, label, result)
    return result


def merge(base_path: Path, adapter_dir: Path, out: Path, *, float16: bool = False) -> tuple[Any, Any]:
    """Base + adapter merged, saved to ``out`` in the base's dtype (or float16); returned as saved, in fp32."""
    import torch
    from peft import PeftModel

    config = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    saved_dtype = torch.float16 if float16 else getattr(torch, stored, torch.float32)
    model = base_model.load_causal_lm(base_path, device="cpu", dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer = base_model.load_tokenizer(base_path)
    model.to(saved_dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model.float().eval(), tokenizer


def sample_texts(settings: Settings, tokenizer: Any, n: int) -> list[str]:
    """The first ``n`` test conversations, rendered with the chat template."""
    try:
        records = manifest.read_split(settings.data_dir, "test")[:n]
    except DataError:
        records = []
    if not records:
        raise DataError(f"no test split in {settings.data_dir} to measure perplexity on",
                        hint="run `changjak data prepare` first")
    return [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]


def torch_perplexity(model: Any, tokenizer: Any, texts: list[str], what: str) -> float:
    """exp(mean NLL per predicted token) over ``texts``, one text at a time."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    for text in tqdm(texts, desc=f"perplexity: {what}", unit="text"):
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()
        total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(total / count)


def torch_perplexity_of(path: Path, texts: list[str]) -> float:
    import torch

    model = base_model.load_causal_lm(path, device="cpu", dtype=torch.float16).float().eval()
    return torch_perplexity(model, base_model.load_tokenizer(path), texts, "exported (merged, f16)")


_CONVERT = """
import runpy, sys
from pathlib import Path
script, pre = Path(sys.argv[1]), sys.argv[2]
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
from conversion.base import TextModel
known = TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:  # a tokenizer llama.cpp has no hash for: use the architecture's own
        if not pre:
            raise
        print(f"pre-tokenizer not recognised; using {pre!r}", file=sys.stderr)
        return pre
TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [str(script), *sys.argv[3:]]
runpy.run_path(str(script), run_name="__main__")
"""
_PRE_TOKENIZERS = {"qwen2": "qwen2"}  # model_type -> llama.cpp pre-tokenizer, for unrecognised tokenizers


def convert(merged: Path, dest: Path) -> Path:
    """``merged`` (safetensors + tokenizer) to an f16 GGUF with llama.cpp's converter."""
    model_type = json.loads((merged / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    return _run_converter("convert_hf_to_gguf.py", _PRE_TOKENIZERS.get(model_type, ""),
                          [str(merged), "--outfile", str(dest), "--outtype", "f16"], dest)


def convert_lora(adapter_dir: Path, base_dir: Path, dest: Path) -> Path:
    """A PEFT LoRA adapter to a GGUF adapter that llama.cpp applies at load (``lora_path``)."""
    return _run_converter("convert_lora_to_gguf.py", "",
                          [str(adapter_dir), "--base", str(base_dir), "--outfile", str(dest), "--outtype", "f16"], dest)


def _run_converter(name: str, pre_tokenizer: str, args: list[str], dest: Path) -> Path:
    from changjak.backends.inference.llamacpp_build import converter

    try:
        script = converter(script=name)
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        raise BackendError(f"llama.cpp's GGUF converter is not available: {e}",
                           hint="run `make .venv/.llamacpp`, which builds llama-cpp-python and unpacks it") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    with console.status(f"converting to {dest.name} (llama.cpp {name})"):
        result = subprocess.run([sys.executable, "-c", _CONVERT, str(script), pre_tokenizer, *args],
                                capture_output=True, text=True)
    if result.returncode != 0 or not dest.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"GGUF conversion failed: {last}",
                           hint="check that the model's architecture is one llama.cpp supports (qwen2 is)")
    return dest


def quantize(source: Path, dest: Path, quant: str, n_threads: int = 2) -> Path:
    """``source`` (f16 GGUF) quantised to ``quant`` with ``llama_cpp.llama_model_quantize``."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = n_threads
    console.print(f"quantising to {dest.name} (a minute or two for 0.5B on 2 cores)")
    with suppress_stdout_stderr(disable=False):  # llama.cpp prints a line per tensor
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    if code != 0 or not dest.is_file():
        raise BackendError(f"llama.cpp could not quantise {source.name} to {quant} (code {code})")
    return dest


def gguf_perplexity(path: Path, texts: list[str], n_threads: int = 2) -> float:
    """The same perplexity as :func:`torch_perplexity`, measured by llama.cpp on the GGUF."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), logits_all=True, n_ctx=64, vocab_only=True, verbose=False)
    tokens = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    llm.close()
    n_ctx = max(64, max(len(t) for t in tokens))
    llm = Llama(str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads,
                verbose=False)
    total, count = 0.0, 0
    try:
        for ids in tqdm(tokens, desc=f"perplexity: exported ({path.name})", unit="text"):
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
            total += float((log_z - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
            count += len(ids) - 1
    finally:
        llm.close()
    return math.exp(total / count)


def register_export(settings: Settings, resolved: registry.ResolvedModel, fmt: str, quant: str,
                    result: ExportResult) -> str:
    """Log an export run and register ``adapter + exported model`` as a new version of the model."""
    from changjak.registry.versions import model_version

    staged = result.out_dir / "version"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(resolved.adapter_dir, staged)
    if result.model_path.is_dir():
        shutil.copytree(result.model_path, staged / "merged")
    else:
        shutil.copy2(result.model_path, staged / result.model_path.name)
    ppl = {k: f"{v:.6g}" for k, v in result.perplexity.items()}
    info = {"format": fmt, "quantization": quant, "exported_from": resolved.version, "perplexity": ppl}
    (staged / "export.json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    run = client.create_run(experiment.experiment_id, run_name=f"export-v{resolved.version}-{fmt}-{quant}",
                            tags={"changjak.stage": "export", "changjak.export.format": fmt,
                                  "changjak.export.quantization": quant,
                                  "changjak.export.source": f"models:/{resolved.name}/{resolved.version}"})
    run_id = run.info.run_id
    for key, value in result.perplexity.items():
        client.log_metric(run_id, f"export.perplexity_{key}", value)
    client.log_artifacts(run_id, str(staged), "model")
    client.set_terminated(run_id)
    source_tags = model_version(client, resolved.name, resolved.version).tags
    tags = {**source_tags, "format": fmt, "quantization": quant, "exported_from": resolved.version,
            "export_run_id": run_id, "perplexity": ppl["exported"], "perplexity_reference": ppl["reference"],
            "perplexity_delta": ppl["delta"]}
    version = client.create_model_version(resolved.name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                          tags=tags)
    console.print(f"registered {resolved.name} v{version.version} ({fmt}, {quant}); "
                  f"serve it: changjak promote --version {version.version} && changjak serve --backend "
                  f"{'llamacpp' if fmt == 'gguf' else 'transformers'}")
    return str(version.version)
