"""prm package."""
