"""lm-eval task YAMLs shipped with dapt (a package so that they install with it)."""
