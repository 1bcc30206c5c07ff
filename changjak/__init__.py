"""changjak (창작): LLMOps for a Korean creative-writing assistant on Qwen2-0.5B.

Run ``changjak --help``. Importing this package is cheap: nothing heavy (torch, transformers,
mlflow) is imported until a stage that needs it runs.
"""

__version__ = "0.1.0"
