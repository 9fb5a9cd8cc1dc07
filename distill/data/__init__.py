"""The questions (GSM8K, MGSM-ja, JSONL files) and the paper's prompts."""
