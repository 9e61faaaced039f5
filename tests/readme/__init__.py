"""README.md run as documentation (issue 20)."""
