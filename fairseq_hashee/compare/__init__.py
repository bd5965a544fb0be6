"""hashee-compare: every exit method trained, generated and scored the same way (docs/comparison.md)."""
