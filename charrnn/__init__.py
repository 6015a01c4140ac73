"""charrnn: a character-level recurrent neural network text predictor in NumPy.

Import what you need from the submodules (``charrnn.model``, ``charrnn.tokenizer``, ...);
this package module stays empty so that ``charrnn --version`` starts instantly.
"""

__version__ = "0.1.0"
