"""Reports: assembly (build), files (io), terminal rendering, Markdown, compare."""

SCHEMA_VERSION = 1
