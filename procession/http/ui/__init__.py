"""
The operator UI: HTML pages rendered from the top-level C{templates/}, with
signed sessions and CSRF tokens.
"""
