"""Building xP3-style collections from raw datasets and promptsource templates (the `build_xp3` command)."""
