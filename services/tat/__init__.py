"""Turnaround analytics: stage intervals from the study timeline, RIS CSV import, exports."""
