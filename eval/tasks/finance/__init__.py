"""Public financial benchmarks BloombergGPT reported (FinBen releases on the HF hub)."""
