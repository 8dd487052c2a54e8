"""``python -m spine.platform.app.cli``: the ``spine`` command (how ``spine up`` starts children)."""

from spine.platform.app.cli import main

main()
