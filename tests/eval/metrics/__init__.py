"""Tests for the benchmark scoring rules."""
