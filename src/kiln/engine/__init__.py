"""The one training engine shared by every recipe (Lightning Fabric underneath).

Import submodules directly (`kiln.engine.fit`, `kiln.engine.task`): this package stays light.
"""
