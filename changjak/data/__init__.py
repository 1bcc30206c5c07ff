"""The data stage: raw JSON/JSONL in, validated, PII-masked, deduplicated, split chat data out.

Run it with ``changjak data prepare --input PATH... --out DIR`` (see :mod:`changjak.data.prepare`);
later stages read its output through :mod:`changjak.data.manifest`.
"""
