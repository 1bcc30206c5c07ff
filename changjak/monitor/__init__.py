"""Observability of the gateway: Prometheus instruments (:mod:`.metrics`), the ASGI middleware
that feeds them from each request's context (:mod:`.middleware`), and the wrapper that times the
inference backend (:mod:`.backend`)."""
