"""Plain domain rules: no framework imports."""
