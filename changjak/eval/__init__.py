"""Evaluation: Korean-correct metrics (``metrics``), the promotion gate (``gate``), base vs
fine-tuned on the test split (``run``, the ``changjak eval`` command) and its report files."""
