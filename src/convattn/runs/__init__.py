"""The run layer: run folders and configs, comparison statistics, reports shared by every job."""
