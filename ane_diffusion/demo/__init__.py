"""The embedded demo: a tiny model trained on synthetic captioned scenes, and the scenes themselves."""
