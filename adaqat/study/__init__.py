"""The method comparison (``adaqat compare``): methods, the runner, tables and plots."""
