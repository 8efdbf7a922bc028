"""End-to-end jobs as entry points (what ``ray job submit`` runs)."""
