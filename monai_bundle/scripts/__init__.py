"""AdaLoRA-QAT engine: the bundle's own code, imported by the configs as ``scripts.*``.

Modules import each other relatively so the same files serve the bundle (``scripts``) and the
installed CLI; nothing is imported eagerly here, to keep ``import scripts`` cheap.
"""
