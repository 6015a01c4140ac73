"""Small texts that the tests share: English, Chinese, and a mix with emoji and accents."""

ENGLISH = "The quick brown fox jumps over the lazy dog. " * 4
CHINESE = "我喜欢学习数学。我喜欢学习语言，也喜欢写字。"
MIXED = "Hello, 世界! 🙂 naïve café — 我喜欢 Python 3.11\n\ttabs"
