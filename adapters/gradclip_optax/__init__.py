"""gradclip_optax: the optax adapter (issue #4); not implemented yet."""
