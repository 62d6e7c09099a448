"""Speed of cmim's training step beside a stand-alone reference step (`python -m cmim bench`).

cmim.bench.tasks: cmim's own step (the real task classes on random batches); cmim.bench.reference:
the reference steps (timm + torch only); cmim.bench.measure: timing, memory, ceilings;
cmim.bench.run: the command. Kept free of heavy imports at package level (the CLI imports it).
"""
