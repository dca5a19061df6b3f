"""capsim: an analytical cost-model simulator with trace replay for MoE LLM inference."""

__version__ = "0.1.0"
