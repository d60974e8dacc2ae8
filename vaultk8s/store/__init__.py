"""The only package that writes output files."""
