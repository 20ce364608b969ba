"""``python -m gradclip_demo``: the main job (see :mod:`gradclip_demo.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
