"""The control API (aiohttp): middlewares, one module per resource with its route table,
the OpenAPI document built from those same tables, and the events stream.
Calls `Cluster.propose` and reads the store; never touches pysyncobj directly.
"""
