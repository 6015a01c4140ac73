"""Small original corpora (English, Chinese) that ship with charrnn as package data."""
