"""Thin orchestration over the pure layers: Ray Data preprocessing, cohort simulation."""
