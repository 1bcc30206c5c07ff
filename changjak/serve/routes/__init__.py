"""One router per resource: ``health`` (probes), ``models`` and ``chat`` (the OpenAI API under /v1)."""
