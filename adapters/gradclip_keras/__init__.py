"""gradclip_keras: the keras adapter (issue #5); not implemented yet."""
