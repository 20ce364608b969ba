"""gradclip_torch: the torch adapter (issue #3); not implemented yet."""
