"""Adapters that run tbhooks' plugins inside other trainers; each imports its framework lazily."""
