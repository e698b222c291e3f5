"""Data that installs with bitkeras: the UCI digits and the generated glyphs."""
