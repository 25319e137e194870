"""Shared pieces every engine and front end builds on: no napari, Qt or argparse."""
