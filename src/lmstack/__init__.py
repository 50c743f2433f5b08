"""lmstack: the LLM development stack in one hackable PyTorch package."""

__version__ = "0.1.0"
