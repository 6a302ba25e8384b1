"""Tests for tilevl.eval."""
